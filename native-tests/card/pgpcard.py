#!/usr/bin/python3
"""pgpcard: a virtual OpenPGP card (v2.0) for vsmartcard's vpcd reader driver, for the tests.

Connecting to vpcd (pcscd's "Virtual PCD" reader) inserts the card; exiting (SIGTERM) or closing
the socket removes it. One RSA signing key (the key file given), PW1 for signing (VERIFY 81) and
for other uses (82), PW3 (83). Enough of the OpenPGP card 2.0 specification for OpenSC's
`openpgp` driver: SELECT of the applet, GET DATA (4F 5E 65 6E 7A C4 5F50 7F21 0101-0104),
VERIFY, PSO:COMPUTE DIGITAL SIGNATURE, reading the public key (GENERATE ASYMMETRIC KEY PAIR, 81),
GET RESPONSE for answers longer than 256 bytes. Python 3 standard library only.

vpcd's protocol (vsmartcard, docs "Creating a virtual smart card"): every message is a 2-byte
big-endian length and a payload. A 1-byte payload is a control code (0 power off, 1 power on,
2 reset, 4 get ATR: answered with the ATR); a longer one is a command APDU, answered with the
response APDU.

usage: pgpcard.py --key KEY.pem [--port 35963] [--serial 0000A001] [--pin 123456]
                  [--admin-pin 12345678] [--cert CERT.der] [--log FILE]
"""
import argparse
import base64
import hashlib
import signal
import socket
import struct
import sys
import time

AID_PREFIX = bytes.fromhex("D27600012401")
VERSION = bytes.fromhex("0200")          # OpenPGP card 2.0
MANUFACTURER = bytes.fromhex("FFFF")     # "test card" in OpenSC's list


# ---- keys ---------------------------------------------------------------------------------------

def der_read(data, pos):
    """One DER TLV at pos: (tag, value, next position)."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    return tag, data[pos:pos + length], pos + length


def der_integers(sequence):
    values, pos = [], 0
    while pos < len(sequence):
        tag, value, pos = der_read(sequence, pos)
        values.append((tag, value))
    return values


def load_rsa_key(path):
    """(n, e, d, p, q, dp, dq, qinv) from a PEM or DER RSA key (PKCS#1 or PKCS#8)."""
    raw = open(path, "rb").read()
    if raw.startswith(b"-----"):
        body = b"".join(line for line in raw.splitlines() if not line.startswith(b"-----"))
        raw = base64.b64decode(body)
    tag, seq, _ = der_read(raw, 0)
    items = der_integers(seq)
    if len(items) == 3 and items[1][0] == 0x30:  # PKCS#8: version, algorithm, OCTET STRING
        _, seq, _ = der_read(items[2][1], 0)
        items = der_integers(seq)
    numbers = [int.from_bytes(v, "big") for t, v in items if t == 0x02]
    if len(numbers) < 9:
        raise SystemExit(f"pgpcard: {path} is not an RSA private key")
    return numbers[1:9]


# ---- BER-TLV ------------------------------------------------------------------------------------

def tlv(tag, value):
    tag_bytes = tag.to_bytes(2, "big") if tag > 0xFF else bytes([tag])
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = bytes([0x81, n])
    else:
        length = bytes([0x82]) + n.to_bytes(2, "big")
    return tag_bytes + length + value


class Card:
    def __init__(self, key, serial, pin, admin_pin, cert, log):
        self.n, self.e, self.d, self.p, self.q, self.dp, self.dq, self.qinv = key
        self.k = (self.n.bit_length() + 7) // 8
        self.aid = AID_PREFIX + VERSION + MANUFACTURER + serial + b"\x00\x00"
        self.pins = {0x81: pin, 0x82: pin, 0x83: admin_pin}
        self.tries = {0x81: 3, 0x83: 3}
        self.cert = cert
        self.counter = 0
        self.log = log
        self.pending = b""
        self.reset()

    def reset(self):
        self.selected = False
        self.verified = set()
        self.pending = b""

    # ATR: T=0 and T=1, historical bytes 80 73 00 00 00 (no extended lengths, no chaining).
    def atr(self):
        body = bytes([0x85, 0x80, 0x01]) + bytes.fromhex("8073000000")
        tck = 0
        for b in body:
            tck ^= b
        return bytes([0x3B]) + body + bytes([tck])

    def fingerprint(self):
        return hashlib.sha1(self.n.to_bytes(self.k, "big") + self.e.to_bytes(4, "big")).digest()

    def pw_status(self):
        # 01: PW1 stays valid for several signatures; max lengths 127/127/127; tries PW1, RC, PW3.
        return bytes([0x01, 0x7F, 0x7F, 0x7F, self.tries[0x81], 0x03, self.tries[0x83]])

    def algorithm(self):
        return bytes([0x01]) + (self.k * 8).to_bytes(2, "big") + (32).to_bytes(2, "big") + b"\x00"

    def discretionary(self):
        ext_caps = bytes([0x00, 0x00, 0x00, 0x00]) + (2048).to_bytes(2, "big") + (255).to_bytes(2, "big") + (256).to_bytes(2, "big")
        return (tlv(0xC0, ext_caps) + tlv(0xC1, self.algorithm()) + tlv(0xC2, self.algorithm())
                + tlv(0xC3, self.algorithm()) + tlv(0xC4, self.pw_status())
                + tlv(0xC5, self.fingerprint() + bytes(40)) + tlv(0xC6, bytes(60)) + tlv(0xCD, bytes(12)))

    def data_object(self, tag):
        if tag == 0x004F:
            return self.aid
        if tag == 0x005E:
            return b""
        if tag == 0x0065:
            return tlv(0x5B, b"p11proxy test card") + tlv(0x5F2D, b"en") + tlv(0x5F35, b"9")
        if tag == 0x006E:
            return tlv(0x4F, self.aid) + tlv(0x73, self.discretionary())
        if tag == 0x007A:
            return tlv(0x93, self.counter.to_bytes(3, "big"))
        if tag == 0x00C4:
            return self.pw_status()
        if tag in (0x5F50, 0x0101, 0x0102):
            return b""
        if tag == 0x7F21:
            return self.cert
        return None

    def public_key(self):
        return tlv(0x7F49, tlv(0x81, self.n.to_bytes(self.k, "big")) + tlv(0x82, self.e.to_bytes(3, "big")))

    def sign(self, digest_info):
        if len(digest_info) > self.k - 11:
            return None
        block = b"\x00\x01" + b"\xff" * (self.k - 3 - len(digest_info)) + b"\x00" + digest_info
        m = int.from_bytes(block, "big")
        s1 = pow(m, self.dp, self.p)
        s2 = pow(m, self.dq, self.q)
        h = (self.qinv * (s1 - s2)) % self.p
        s = s2 + h * self.q
        return s.to_bytes(self.k, "big")

    # ---- APDUs ----------------------------------------------------------------------------------

    def respond(self, data, le):
        """Data and 9000, or the first 256 bytes and 61xx (the rest by GET RESPONSE)."""
        limit = 256 if le in (None, 0) or le > 256 else le
        if len(data) > limit:
            self.pending = data[limit:]
            return data[:limit] + bytes([0x61, min(len(self.pending), 255) & 0xFF])
        return data + b"\x90\x00"

    def apdu(self, command):
        if len(command) < 4:
            return b"\x67\x00"
        cla, ins, p1, p2 = command[:4]
        body = command[4:]
        data, le = b"", None
        if len(body) == 1:
            le = body[0] or 256
        elif len(body) > 1:
            if body[0] == 0 and len(body) >= 3:  # extended length
                lc = int.from_bytes(body[1:3], "big")
                data = body[3:3 + lc]
                rest = body[3 + lc:]
                if len(body) == 3:
                    data, le = b"", lc or 65536
                elif rest:
                    le = int.from_bytes(rest[-2:], "big") or 65536
            else:
                lc = body[0]
                data = body[1:1 + lc]
                rest = body[1 + lc:]
                if rest:
                    le = rest[0] or 256
        if cla & 0x10:
            return b"\x68\x84"  # no command chaining
        if ins != 0xC0:
            self.pending = b""
        if ins == 0xA4:
            return self.select(p1, p2, data, le)
        if ins == 0xC0:
            pending, self.pending = self.pending, b""
            if not pending:
                return b"\x6F\x00"
            return self.respond(pending, le)
        if not self.selected:
            return b"\x69\x85"
        if ins == 0xCA:
            value = self.data_object((p1 << 8) | p2)
            if value is None:
                return b"\x6A\x88"
            return self.respond(value, le)
        if ins == 0x20:
            return self.verify(p1, p2, data)
        if ins == 0x2A and p1 == 0x9E and p2 == 0x9A:
            if 0x81 not in self.verified:
                return b"\x69\x82"
            signature = self.sign(data)
            if signature is None:
                return b"\x67\x00"
            self.counter += 1
            return self.respond(signature, le)
        if ins == 0x2A:
            return b"\x6A\x86"
        if ins == 0x47 and p1 == 0x81:
            if data != b"\xB6\x00":
                return b"\x6A\x88"
            return self.respond(self.public_key(), le)
        if ins in (0x47, 0x88, 0x84, 0xDA, 0xDB, 0x24, 0x2C, 0xE6, 0x44, 0x22):
            return b"\x69\x82"
        return b"\x6D\x00"

    def select(self, p1, p2, data, le):
        if p1 == 0x04 and len(data) >= 6 and self.aid.startswith(data):
            self.selected = True
            self.verified.clear()
            if p2 & 0x0C == 0x0C:
                return b"\x90\x00"
            return self.respond(tlv(0x6F, tlv(0x84, self.aid)), le)
        return b"\x6A\x82"

    def verify(self, p1, p2, data):
        if p2 not in (0x81, 0x82, 0x83):
            return b"\x6A\x86"
        if p1 == 0xFF:
            self.verified.discard(p2)
            return b"\x90\x00"
        counter = 0x83 if p2 == 0x83 else 0x81
        if not data:
            if p2 in self.verified:
                return b"\x90\x00"
            return bytes([0x63, 0xC0 | self.tries[counter]])
        if self.tries[counter] == 0:
            return b"\x69\x83"
        if data == self.pins[p2]:
            self.tries[counter] = 3
            self.verified.add(p2)
            return b"\x90\x00"
        self.tries[counter] -= 1
        self.verified.discard(p2)
        return bytes([0x63, 0xC0 | self.tries[counter]])


def receive_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main():
    parser = argparse.ArgumentParser(description="virtual OpenPGP card for vpcd")
    parser.add_argument("--key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=35963)
    parser.add_argument("--serial", default="0000A001", help="4 bytes, hex")
    parser.add_argument("--pin", default="123456")
    parser.add_argument("--admin-pin", default="12345678")
    parser.add_argument("--cert", help="DER certificate for DO 7F21")
    parser.add_argument("--log", help="write every APDU and answer here")
    parser.add_argument("--connect-timeout", type=float, default=20.0)
    args = parser.parse_args()

    serial = bytes.fromhex(args.serial)
    if len(serial) != 4:
        raise SystemExit("pgpcard: --serial is 4 bytes in hex (8 digits)")
    log = open(args.log, "a", buffering=1) if args.log else None
    cert = open(args.cert, "rb").read() if args.cert else b""
    card = Card(load_rsa_key(args.key), serial, args.pin.encode(), args.admin_pin.encode(), cert, log)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + args.connect_timeout
    while True:
        try:
            conn = socket.create_connection((args.host, args.port))
            break
        except OSError as error:
            if time.monotonic() > deadline:
                raise SystemExit(f"pgpcard: cannot reach vpcd at {args.host}:{args.port}: {error}")
            time.sleep(0.1)
    if log:
        log.write("inserted\n")
    try:
        while True:
            header = receive_exactly(conn, 2)
            if header is None:
                break
            (length,) = struct.unpack(">H", header)
            payload = receive_exactly(conn, length)
            if payload is None:
                break
            if length == 1:
                code = payload[0]
                if code in (0, 1, 2):
                    card.reset()
                elif code == 4:
                    atr = card.atr()
                    conn.sendall(struct.pack(">H", len(atr)) + atr)
                if log:
                    log.write(f"control {code}\n")
                continue
            answer = card.apdu(payload)
            if log:
                shown = payload.hex() if payload[1] != 0x20 else payload[:5].hex() + "..."  # never a PIN
                log.write(f"> {shown}\n< {answer[-2:].hex()} ({len(answer) - 2} bytes)\n")
            conn.sendall(struct.pack(">H", len(answer)) + answer)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
