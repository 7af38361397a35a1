#!/usr/bin/env python3
"""Print a DHCP server's lease database as JSON lines, one per IP, sorted by IP:
{"ip", "mac", "hostname", "client_id" (lowercase hex, no separators), "expires" (unix seconds,
0 = never), "state" ("active", "free", "expired", "declined", "released", ... as the server says)}.

Usage: leases.py dnsmasq|kea|dhcpd LEASE_FILE

Kea's memfile and dhcpd.leases are append-only journals: the last entry for an IP wins.
"""
import calendar
import csv
import ipaddress
import json
import re
import sys
import time


def hex_of_colons(s):
    """'01:02:77:0a' -> '0102770a'; '*' / '' -> None."""
    if s in ("", "*"):
        return None
    return "".join(part.zfill(2) for part in s.split(":")).lower()


def dnsmasq(path):
    # "<expiry> <mac> <ip> <hostname|*> <client-id|*>"; a "duid ..." line belongs to DHCPv6.
    leases = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) != 5 or fields[0] == "duid":
                continue
            expiry, mac, ip, host, cid = fields
            leases[ip] = dict(ip=ip, mac=mac.lower(), hostname=None if host == "*" else host,
                              client_id=hex_of_colons(cid), expires=int(expiry), state="active")
    return leases


KEA_STATES = {"0": "active", "1": "declined", "2": "expired"}


def kea(path):
    leases = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            ip = row["address"]
            # memfile records a deleted (e.g. released) lease as an entry with valid_lifetime 0
            state = "free" if row["valid_lifetime"] == "0" else KEA_STATES.get(row["state"], row["state"])
            host = row.get("hostname") or None
            if host is not None:
                host = host.replace("&#x2c", ",")
            leases[ip] = dict(ip=ip, mac=(row["hwaddr"] or "").lower() or None, hostname=host,
                              client_id=hex_of_colons(row["client_id"]), expires=int(row["expire"]),
                              state=state)
    return leases


def dhcpd_string(s):
    """Decode a dhcpd.leases quoted string (C-style, octal escapes) to bytes."""
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            m = re.match(r"[0-7]{1,3}", s[i + 1:])
            if m:
                out.append(int(m.group(0), 8))
                i += 1 + len(m.group(0))
                continue
            out += {"n": b"\n", "t": b"\t", "r": b"\r"}.get(s[i + 1], s[i + 1].encode())
            i += 2
            continue
        out += c.encode()
        i += 1
    return bytes(out)


def dhcpd_time(stmt):
    # "6 2026/11/28 04:50:00" (UTC), "never", or "epoch 1764305460" (db-time-format local)
    if stmt.startswith("never"):
        return 0
    if stmt.startswith("epoch"):
        return int(stmt.split()[1])
    _, date, clock = stmt.split()[:3]
    return calendar.timegm(time.strptime(date + " " + clock, "%Y/%m/%d %H:%M:%S"))


LEASE_BLOCK = re.compile(r"^lease\s+(\S+)\s*\{(.*?)^\}", re.S | re.M)
QUOTED = r'"((?:[^"\\]|\\.)*)"'


def dhcpd(path):
    leases = {}
    with open(path) as f:
        text = f.read()
    for ip, body in LEASE_BLOCK.findall(text):
        def stmt(pattern):
            m = re.search(r"^\s*" + pattern + r"\s*;", body, re.M)
            return m.group(1) if m else None
        uid = stmt("uid " + QUOTED)
        uid_hex = stmt(r"uid ([0-9a-fA-F:]+)")  # dhcpd writes unprintable-only ids this way at times
        host = stmt("client-hostname " + QUOTED)
        mac = stmt(r"hardware ethernet ([0-9a-fA-F:]+)")
        ends = stmt(r"ends ([^;]+)")
        leases[ip] = dict(ip=ip, mac=mac.lower() if mac else None,
                          hostname=dhcpd_string(host).decode(errors="replace") if host is not None else None,
                          client_id=dhcpd_string(uid).hex() if uid is not None else hex_of_colons(uid_hex or ""),
                          expires=dhcpd_time(ends) if ends else 0,
                          state=stmt(r"binding state (\S+)") or "active")
    return leases


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("dnsmasq", "kea", "dhcpd"):
        sys.exit("usage: leases.py dnsmasq|kea|dhcpd LEASE_FILE")
    leases = globals()[sys.argv[1]](sys.argv[2])
    for ip in sorted(leases, key=ipaddress.ip_address):
        print(json.dumps(leases[ip]))


if __name__ == "__main__":
    main()
