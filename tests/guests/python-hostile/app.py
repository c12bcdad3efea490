"""python-hostile: a Python plugin that misbehaves on purpose, to test the engine's
limits on componentize-py components (deadline, memory, exceptions); `sdk` calls the
SDK's wrappers a flow does not use (portal state, cookies, redirects, dialogs) once."""

from faena import BusinessError, Context, Cookie, Operation, Page, Plugin, export, http, keep_state

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
        Operation("sdk", "Call the SDK's state, cookie, redirect and dialog wrappers", ANY, browser=True),
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
        if operation == "sdk":
            return sdk(input["url"])
        return super().run(operation, input, ctx)


def sdk(base: str) -> dict:
    keep_state()
    login = http.send(
        "POST",
        f"{base}/permits/api/login",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=b"user=arq.vera&password=permits-demo",
        follow_redirects=False,
    )
    whoami = http.get(f"{base}/permits/api/whoami")
    page = Page.open()
    page.goto(f"{base}/permits/login")
    page.set_cookies([Cookie("probe", "py", "127.0.0.1", "/", None, False, False)])
    page.evaluate("alert('hi from python')")
    return {
        "status": login.status,
        "location": login.header("location"),
        "whoami": whoami.json(),
        "jar": [c.name for c in http.cookies()],
        "page_cookies": sorted(c.name for c in page.cookies()),
        "dialogs": page.dialogs(),
    }


WitWorld = export(Hostile)
