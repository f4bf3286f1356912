"""Verifies a DSSE envelope with securesystemslib, an implementation of
DSSE that shares nothing with prodgate (tests/attest.rs runs it).

Usage: dsse_verify.py ENVELOPE_FILE PUBLIC_KEY_PEM_FILE

Prints the verified payload (the in-toto Statement) as JSON and exits 0;
exits 1 with the reason on stderr when the envelope does not verify.
"""

import json
import sys

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey


def main() -> int:
    with open(sys.argv[1], "rb") as f:
        envelope = Envelope.from_dict(json.load(f))
    with open(sys.argv[2], "rb") as f:
        public = load_pem_public_key(f.read())
    key = SSlibKey.from_crypto(public, scheme="ecdsa-sha2-nistp256")
    # cosign's key-based envelopes carry an empty keyid; securesystemslib
    # only tries a key on signatures whose keyid matches its own.
    key = SSlibKey("", key.keytype, key.scheme, key.keyval)
    if envelope.payload_type != "application/vnd.in-toto+json":
        print(f"payloadType {envelope.payload_type!r}", file=sys.stderr)
        return 1
    try:
        envelope.verify([key], 1)
    except VerificationError as e:
        print(f"does not verify: {e}", file=sys.stderr)
        return 1
    print(envelope.payload.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
