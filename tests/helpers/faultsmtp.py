"""An SMTP server that misbehaves on purpose, for specs of how the client takes a server's faults.

usage: faultsmtp.py PORT LOG [--auth-reply "CODE TEXT"] [--idle SECONDS]

It never offers STARTTLS and always offers AUTH PLAIN LOGIN. AUTH is answered 235, or with
--auth-reply's line. With --idle, a session that sends nothing for SECONDS gets
"421 4.4.2 idle timeout" and is closed, as Postfix's smtpd_timeout does. Recipients whose local
part starts with "reject" get "550 5.1.1 no such user" at RCPT; a message to one starting with
"refuse" gets "554 5.7.1 content rejected" after its DATA. Everything else is accepted.

LOG gets a line per event: "N connect", "N < COMMAND" (an AUTH line as sent, its credentials
too: specs look for whether they were sent), "N idle-closed", "N closed", N numbering the
connections from 1.
"""
import itertools
import socket
import sys
import threading

lock = threading.Lock()


def log(path, conn, text):
    with lock:
        with open(path, "a") as f:
            f.write("%d %s\n" % (conn, text))


def session(sock, conn, path, auth_reply, idle):
    f = sock.makefile("rb")

    def send(line):
        sock.sendall((line + "\r\n").encode())

    log(path, conn, "connect")
    send("220 fault.example ESMTP")
    if idle:
        sock.settimeout(idle)
    rcpts, in_data = [], False
    try:
        while True:
            try:
                raw = f.readline()
            except socket.timeout:
                send("421 4.4.2 fault.example idle timeout")
                log(path, conn, "idle-closed")
                return
            if not raw:
                log(path, conn, "closed")
                return
            line = raw.decode("latin-1").rstrip("\r\n")
            if in_data:
                if line == ".":
                    in_data = False
                    if any(r.startswith("<refuse") for r in rcpts):
                        send("554 5.7.1 content rejected")
                    else:
                        send("250 2.0.0 queued")
                    rcpts = []
                continue
            log(path, conn, "< " + line)
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                for ext in ("250-fault.example", "250-PIPELINING", "250-8BITMIME",
                            "250-AUTH PLAIN LOGIN", "250 SIZE 10000000"):
                    send(ext)
            elif verb == "HELO":
                send("250 fault.example")
            elif verb == "AUTH":
                if auth_reply:
                    send(auth_reply)
                elif len(line.split()) == 2:  # the credentials follow on a line of their own
                    send("334 ")
                    log(path, conn, "< " + f.readline().decode("latin-1").rstrip("\r\n"))
                    send("235 2.7.0 authenticated")
                else:
                    send("235 2.7.0 authenticated")
            elif verb == "MAIL":
                rcpts = []
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                addr = line.split(":", 1)[1].strip()
                if addr.startswith("<reject"):
                    send("550 5.1.1 no such user")
                else:
                    rcpts.append(addr)
                    send("250 2.1.5 ok")
            elif verb == "DATA":
                in_data = True
                send("354 go ahead")
            elif verb in ("RSET", "NOOP"):
                rcpts = []
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                log(path, conn, "closed")
                return
            else:
                send("502 5.5.2 unknown command")
    except OSError:
        log(path, conn, "closed")
    finally:
        sock.close()


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    args = sys.argv[3:]
    auth_reply, idle = None, None
    while args:
        opt = args.pop(0)
        if opt == "--auth-reply":
            auth_reply = args.pop(0)
        elif opt == "--idle":
            idle = float(args.pop(0))
        else:
            sys.exit("unknown option " + opt)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    for conn in itertools.count(1):
        sock, _ = server.accept()
        threading.Thread(target=session, args=(sock, conn, path, auth_reply, idle), daemon=True).start()


if __name__ == "__main__":
    main()
