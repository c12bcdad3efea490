"""python-hostile: a Python plugin that misbehaves on purpose, to test the engine's
limits on componentize-py components (deadline, memory, exceptions)."""

from faena import BusinessError, Context, Operation, Plugin, export

ANY = {"type": "object"}


class Hostile(Plugin):
    name = "python-hostile"
    version = "0.1.0"
    description = "Misbehaves on purpose: loops, allocates, raises"
    operations = [
        Operation("echo", "Return the input", ANY),
        Operation("loop", "Spin forever (`while True: pass`)", ANY),
        Operation("alloc", "Allocate 1 MiB blocks without bound", ANY),
        Operation("raise", "Raise ValueError('boom')", ANY),
        Operation("business", "Raise BusinessError('bad data', code='bad-data')", ANY),
    ]

    def run(self, operation: str, input: dict, ctx: Context):
        if operation == "echo":
            return input
        if operation == "loop":
            while True:
                pass
        if operation == "alloc":
            blocks = []
            while True:
                blocks.append(bytes(1 << 20))
        if operation == "raise":
            raise ValueError("boom")
        if operation == "business":
            raise BusinessError("bad data", code="bad-data")
        return super().run(operation, input, ctx)


WitWorld = export(Hostile)
