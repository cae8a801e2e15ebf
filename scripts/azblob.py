#!/usr/bin/env python3
"""A minimal Blob Storage client with SharedKey auth, for scripts/bench and by hand against
Azurite (no az CLI needed). Standard library only.

    scripts/azblob.py create  http://127.0.0.1:10000/devstoreaccount1/CONTAINER
    scripts/azblob.py put     http://127.0.0.1:10000/devstoreaccount1/CONTAINER/NAME FILE
    scripts/azblob.py get     http://127.0.0.1:10000/devstoreaccount1/CONTAINER/NAME
    scripts/azblob.py delete  http://127.0.0.1:10000/devstoreaccount1/CONTAINER/NAME
    scripts/azblob.py list    http://127.0.0.1:10000/devstoreaccount1/CONTAINER [PREFIX]

The key comes from AZURE_STORAGE_KEY, else Azurite's well-known devstoreaccount1 key.
"""
import base64
import email.utils
import hashlib
import hmac
import http.client
import os
import sys
import urllib.parse
import xml.etree.ElementTree as ET

AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-08-06"


class Client:
    """Path-style (emulator) URLs: http://host:port/ACCOUNT/..."""

    def __init__(self, endpoint, key=None):
        parts = urllib.parse.urlsplit(endpoint)
        self.host, self.port = parts.hostname, parts.port
        self.account = parts.path.strip("/").split("/")[0]
        self.key = base64.b64decode(key or os.environ.get("AZURE_STORAGE_KEY") or AZURITE_KEY)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def request(self, method, path, query=None, body=b"", headers=None):
        query = query or {}
        headers = dict(headers or {})
        headers["x-ms-date"] = email.utils.formatdate(usegmt=True)
        headers["x-ms-version"] = VERSION
        path = "/%s/%s" % (self.account, urllib.parse.quote(path.lstrip("/")))
        length = str(len(body)) if body else ""
        lower = {k.lower(): v for k, v in headers.items()}
        sign = [method, lower.get("content-encoding", ""), lower.get("content-language", ""), length,
                lower.get("content-md5", ""), lower.get("content-type", ""), "", lower.get("if-modified-since", ""),
                lower.get("if-match", ""), lower.get("if-none-match", ""), lower.get("if-unmodified-since", ""),
                lower.get("range", "")]
        text = "\n".join(sign) + "\n"
        text += "".join("%s:%s\n" % (k, lower[k].strip()) for k in sorted(lower) if k.startswith("x-ms-"))
        text += "/%s%s" % (self.account, path)
        text += "".join("\n%s:%s" % (k.lower(), query[k]) for k in sorted(query))
        sig = base64.b64encode(hmac.new(self.key, text.encode(), hashlib.sha256).digest()).decode()
        headers["Authorization"] = "SharedKey %s:%s" % (self.account, sig)
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        try:
            self.conn.request(method, url, body=body, headers=headers)
            response = self.conn.getresponse()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self.conn.request(method, url, body=body, headers=headers)
            response = self.conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def create_container(self, container):
        status, _, body = self.request("PUT", container, {"restype": "container"})
        if status not in (201, 409):
            raise RuntimeError("create %s: %s %s" % (container, status, body[:200]))

    def put(self, container, name, data, headers=None):
        h = {"x-ms-blob-type": "BlockBlob"}
        h.update(headers or {})
        status, resp, body = self.request("PUT", "%s/%s" % (container, name), body=data, headers=h)
        if status != 201:
            raise RuntimeError("put %s: %s %s" % (name, status, body[:200]))
        return resp.get("etag")

    def get(self, container, name):
        status, resp, body = self.request("GET", "%s/%s" % (container, name))
        if status == 404:
            return None, None
        if status != 200:
            raise RuntimeError("get %s: %s" % (name, status))
        return body, resp.get("etag")

    def delete(self, container, name):
        status, _, _ = self.request("DELETE", "%s/%s" % (container, name))
        if status not in (202, 404):
            raise RuntimeError("delete %s: %s" % (name, status))

    def list(self, container, prefix=None):
        names, marker = [], None
        while True:
            query = {"restype": "container", "comp": "list"}
            if prefix:
                query["prefix"] = prefix
            if marker:
                query["marker"] = marker
            status, _, body = self.request("GET", container, query)
            if status != 200:
                raise RuntimeError("list: %s" % status)
            root = ET.fromstring(body)
            names += [b.findtext("Name") for b in root.iter("Blob")]
            marker = root.findtext("NextMarker")
            if not marker:
                return names


def split(url):
    """http://h:p/account/container[/name] -> (endpoint, container, name)"""
    parts = urllib.parse.urlsplit(url)
    segs = parts.path.strip("/").split("/", 2)
    endpoint = "%s://%s/%s" % (parts.scheme, parts.netloc, segs[0])
    return endpoint, segs[1], (segs[2] if len(segs) > 2 else "")


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    endpoint, container, name = split(argv[1])
    c = Client(endpoint)
    cmd = argv[0]
    if cmd == "create":
        c.create_container(container)
    elif cmd == "put":
        with open(argv[2], "rb") as f:
            print(c.put(container, name, f.read()))
    elif cmd == "get":
        data, _ = c.get(container, name)
        if data is None:
            return 1
        sys.stdout.buffer.write(data)
    elif cmd == "delete":
        c.delete(container, name)
    elif cmd == "list":
        for n in c.list(container, argv[2] if len(argv) > 2 else None):
            print(n)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
