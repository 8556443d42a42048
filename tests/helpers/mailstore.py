"""An SMTP server that keeps every message it accepts, for specs that check MIME content.

usage: mailstore.py PORT DIR

Each accepted message is written to DIR/N.eml (the DATA as received) and DIR/N.json (the
envelope). Recipients whose local part starts with "tempfail" get 451, "reject" get 550, so
specs can see how the client classifies SMTP refusals.
"""
import asyncio
import json
import os
import signal
import sys

from aiosmtpd.controller import Controller


class Store:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("tempfail"):
            return "451 4.3.0 try again later"
        if local.startswith("reject"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, str(self.count))
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos}, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 OK queued as " + str(self.count)


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Store(directory), hostname="127.0.0.1", port=port)
    controller.start()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
