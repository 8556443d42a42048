"""Parses a stored message with Python's email package (an independent MIME reader) and prints
what specs check, one `name=hex(value)` per line.

usage: mimecheck.py FILE
"""
import sys
from email import policy
from email.parser import BytesParser


def out(name, value):
    print(name + "=" + str(value).encode("utf-8").hex())


def main():
    with open(sys.argv[1], "rb") as f:
        msg = BytesParser(policy=policy.default).parse(f)
    for name in ("From", "To", "Subject", "Message-ID", "Date", "List-Unsubscribe",
                 "List-Unsubscribe-Post", "MIME-Version", "X-Campaign", "X-Offer"):
        if msg[name] is not None:
            out(name.lower(), str(msg[name]))
    if msg["From"] is not None and msg["From"].addresses:
        out("from-name", msg["From"].addresses[0].display_name)
    out("content-type", msg.get_content_type())
    out("defects", len(msg.defects))
    parts = list(msg.iter_parts()) if msg.is_multipart() else [msg]
    for i, part in enumerate(parts, 1):
        out("part%d-type" % i, part.get_content_type())
        out("part%d-charset" % i, part.get_content_charset())
        out("part%d-body" % i, part.get_content())
        out("part%d-defects" % i, len(part.defects))
    out("parts", len(parts))


if __name__ == "__main__":
    main()
