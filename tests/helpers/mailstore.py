"""An SMTP server that keeps every message it accepts, for specs that check MIME content.

usage: mailstore.py PORT DIR [--starttls CERT KEY | --starttls-optional CERT KEY | --smtps CERT KEY]
                   [--auth USER:PASSWORD]

--starttls offers and requires STARTTLS, --starttls-optional offers it and takes mail without it
too; --smtps speaks TLS from the first byte; --auth requires AUTH (PLAIN or LOGIN, over TLS)
with these credentials. Each accepted message is written to DIR/N.eml (the DATA as received)
and DIR/N.json (the envelope, with "starttls": whether the session was upgraded with STARTTLS).
Recipients whose local part starts with "tempfail" get 451, "reject" get 550, and a sender whose
local part starts with "blocked" gets 550 at MAIL FROM, so specs can see how the client
classifies SMTP refusals. Refusals at RCPT that are not about the recipient's mailbox,
by the recipient's local part: "relaydenied" gets "550 5.7.1 Relaying denied", "senderpolicy"
Postfix's "553 5.7.1 ... Sender address rejected" (its sender checks answer at RCPT),
"sysfull" "550 5.3.4 ..." (the server's own limit), "exonouser" Exchange Online's "550 5.4.1
Recipient address rejected" for an address it does not know, "plainrelay" a 550 without an enhanced
code naming relaying, "plainnouser" a 550 without one that quotes the address and names the
mailbox.
"""
import asyncio
import json
import os
import signal
import sys

import ssl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


# Replies to RCPT by the recipient's local part (see the top of this file); the first prefix
# that matches answers.
RCPT_REFUSALS = [
    ("tempfail", "451 4.3.0 try again later"),
    ("reject", "550 5.1.1 no such user"),
    ("relaydenied", "550 5.7.1 Relaying denied"),
    ("senderpolicy", "553 5.7.1 <{sender}>: Sender address rejected: not owned by user {sender}"),
    ("sysfull", "550 5.3.4 Message too big for system"),
    ("plainrelay", "550 relaying not permitted"),
    ("exonouser", "550 5.4.1 Recipient address rejected: Access denied"),
    ("plainnouser", "550 <{address}>: Recipient address rejected: mailbox unavailable"),
]


class Store:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.split("@", 1)[0].startswith("blocked"):
            return "550 5.7.1 sender rejected by policy"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        for prefix, reply in RCPT_REFUSALS:
            if local.startswith(prefix):
                return reply.format(address=address, sender=envelope.mail_from)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, str(self.count))
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                       "starttls": session.ssl is not None}, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 OK queued as " + str(self.count)


def authenticator_for(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user
              and auth_data.password.decode() == password)
        # handled=False makes the server answer 535 itself on a refusal.
        return AuthResult(success=ok, handled=False)
    return authenticate


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    args = sys.argv[3:]
    kwargs = {}
    while args:
        opt = args.pop(0)
        if opt in ("--starttls", "--starttls-optional", "--smtps"):
            cert, key = args.pop(0), args.pop(0)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            if opt in ("--starttls", "--starttls-optional"):
                kwargs["tls_context"] = context
                kwargs["require_starttls"] = opt == "--starttls"
            else:
                kwargs["ssl_context"] = context
                # The server object cannot see that the transport is TLS from the start.
                kwargs["auth_require_tls"] = False
        elif opt == "--auth":
            user, password = args.pop(0).split(":", 1)
            kwargs["authenticator"] = authenticator_for(user, password)
            kwargs["auth_required"] = True
        else:
            sys.exit("unknown option " + opt)
    controller = Controller(Store(directory), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
