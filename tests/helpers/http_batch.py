# Sends the requests of a JSON file to a server over one keep-alive connection and prints a JSON
# list of {"status", "body", "location"}: python3 http_batch.py PORT REQUESTS.json
# A request is {"method", "path", "body" (string, optional), "headers" (object, optional)}, or
# {"method", "path", "announce": N}: only the head, with Content-Length N, on its own socket
# (what a server that refuses a body by its announced size answers before reading it).
import http.client
import json
import socket
import sys


def announce(r):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
               % (r["method"], r["path"], r["announce"])).encode())
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    return {"status": int(head.split(b" ")[1]), "body": body.decode("utf-8", "replace"),
            "location": None}


port = int(sys.argv[1])
with open(sys.argv[2]) as f:
    requests = json.load(f)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
answers = []
for r in requests:
    if "announce" in r:
        answers.append(announce(r))
        continue
    body = r.get("body")
    headers = r.get("headers", {})
    conn.request(r["method"], r["path"], body=body.encode() if body is not None else None,
                 headers=headers)
    res = conn.getresponse()
    data = res.read()
    answers.append({"status": res.status, "body": data.decode("utf-8", "replace"),
                    "location": res.getheader("Location")})
    if res.getheader("Connection", "").lower() == "close":
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
print(json.dumps(answers))
