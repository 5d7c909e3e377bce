"""``synthcxr`` command line: one sub-command per user-facing tool, each implemented in its own module."""

from __future__ import annotations

import importlib
import sys

# name -> (module, function taking argv, one-line help). Modules are imported only when used.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "phantom": ("synthcxr.data.phantom", "cli", "write a phantom dataset in a real on-disk layout"),
    "verify": ("synthcxr.archive.verify", "cli", "check a release against its manifest and checksums"),
    "regenerate": ("synthcxr.archive.regenerate", "cli", "re-render one released sample from its latent"),
    "score-classifier": ("synthcxr.classifier.score", "cli", "score a trained classifier on a prepared dataset"),
    "reader-study": ("synthcxr.reader_study.cli", "cli", "build or score a radiologist reader study"),
    "pggan-allocations": ("synthcxr.pggan.allocations", "cli", "how many cluster jobs a GAN schedule needs at a rate"),
    "pggan-memory": ("synthcxr.pggan.memory", "cli", "memory per GPU of a GAN training step at each resolution"),
    "config-doc": ("synthcxr.config_doc", "cli", "write docs/configuration.md from the config schema"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: synthcxr COMMAND [ARGS...]\n\ncommands:")
        for name, (_, _, helptext) in COMMANDS.items():
            print(f"  {name:<14}{helptext}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"synthcxr: unknown command {name!r}; run 'synthcxr --help'", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
