"""``avirt metadata DOM URI``: read, set or remove a domain's metadata element in one XML namespace.

virsh's ``metadata`` on ``Domain.metadata()`` and ``Domain.set_metadata()``::

    avirt metadata web1 http://app/1                                   # print the element
    avirt metadata web1 http://app/1 --set '<app><owner>ops</owner></app>' --key app
    avirt metadata web1 http://app/1 --remove --config

Which definition: reading, the live one while the domain runs (``--live`` insists on it), the persistent
one with ``--config``. Changing, without a flag both (a shut-off domain: its definition), with ``--live``
only the running domain, with ``--config`` only the persistent definition. A transient domain has no
persistent definition, so changing one needs ``--live``.
"""

from __future__ import annotations

import argparse

from avirt.cli.command import DOMAIN_MANAGEMENT, Command, CommandError, Context, add_domain_argument


async def _metadata(ctx: Context, args: argparse.Namespace) -> None:
    changing = args.set is not None or args.remove
    if args.set is not None and not args.key:
        raise CommandError("--set needs --key PREFIX, the namespace prefix to store the element under")
    if not changing and args.live and args.config:
        raise CommandError("reading metadata takes --live or --config, not both")
    found: str | None = None
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        if changing:
            live, config = (args.live, args.config) if args.live or args.config else (True, True)
            await dom.set_metadata(args.namespace, args.set, prefix=args.key, live=live, config=config)
        else:
            if args.live and (await dom.state())[0].value == "shutoff":
                raise CommandError(f"domain '{dom.name}' is not running: it has no live metadata")
            found = await dom.metadata(args.namespace, inactive=args.config)
    if changing:
        ctx.say("Metadata removed" if args.remove else "Metadata modified")
        return
    if found is None:
        raise CommandError(f"domain '{dom.name}' has no metadata element in namespace '{args.namespace}'")
    ctx.say(found)


def _metadata_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    # dest "namespace": "uri" is the global -c option's
    parser.add_argument("namespace", metavar="URI",
                        help="the XML namespace of the element (an application's own)")
    change = parser.add_mutually_exclusive_group()
    change.add_argument("--set", metavar="XML",
                        help="replace the element with XML (one element; it is put in namespace URI)")
    change.add_argument("--remove", action="store_true", help="remove the element")
    parser.add_argument("--key", metavar="PREFIX", help="the namespace prefix to store the element under "
                        "(needed with --set)")
    parser.add_argument("--live", action="store_true",
                        help="the running domain (reading: refuse a shut-off domain)")
    parser.add_argument("--config", action="store_true", help="the persistent definition")


COMMANDS = (
    Command("metadata", "Show or change a domain's metadata element in one XML namespace", _metadata,
            _metadata_args,
            details="Without --set or --remove the element is printed as it was set: without its "
                    "namespace (virsh's form); an error if the domain has none in that namespace.\n\n"
                    "--set stores XML in namespace URI under the prefix --key, whatever namespace it was "
                    "written in. A change goes to the running domain and to the persistent definition "
                    "(a shut-off domain: the definition); --live or --config limits it to one of them. "
                    "A transient domain has no persistent definition: change it with --live.",
            example="avirt metadata web1 http://example.org/app/1 --set '<app><owner>ops</owner></app>' "
                    "--key app\n"
                    "avirt metadata web1 http://example.org/app/1\n"
                    "avirt metadata web1 http://example.org/app/1 --remove --config",
            group=DOMAIN_MANAGEMENT),
)
