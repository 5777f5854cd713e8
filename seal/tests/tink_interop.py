#!/usr/bin/env python3
"""Drives Google's Tink (pip install tink) for veil-seal's interop tests.

  keygen OUT KEYSPEC... [--primary N]   write a cleartext JSON keyset holding one key per KEYSPEC;
                                        key N (0-based, default 0) is primary; OUT.bin gets the
                                        same keyset in Tink's binary form.
      KEYSPEC: gcm:KEY_SIZE:HKDF_HASH:DERIVED_SIZE:SEGMENT_SIZE
               ctr:KEY_SIZE:HKDF_HASH:DERIVED_SIZE:MAC_HASH:TAG_SIZE:SEGMENT_SIZE
               or a Tink template name such as AES256_GCM_HKDF_1MB
  encrypt KEYSET AAD_HEX IN OUT         Tink streaming encryption
  decrypt KEYSET AAD_HEX IN OUT         Tink streaming decryption (exit 1 on failure)
  batch OPS.json                        run many encrypt/decrypt operations in one process:
                                        OPS.json is a list of {"op", "keyset", "aad_hex", "in",
                                        "out"}; prints a JSON list of {"ok": bool, "error": str}
"""
import json
import sys
import warnings

# Tink marks the AES-CTR-HMAC template helper deprecated; the GKE seed still used that key type.
warnings.simplefilter("ignore", DeprecationWarning)

try:
    import tink
    from tink import secret_key_access
    from tink import streaming_aead
    from tink.proto import common_pb2
except ImportError:
    sys.exit("Google's Tink for Python is missing: run `pip install tink`")

streaming_aead.register()
TEMPLATES = streaming_aead.streaming_aead_key_templates
HASHES = {"SHA1": common_pb2.SHA1, "SHA256": common_pb2.SHA256, "SHA512": common_pb2.SHA512}


def template(spec):
    parts = spec.split(":")
    if parts[0] == "gcm":
        key_size, hkdf_hash, derived, segment = parts[1:]
        return TEMPLATES.create_aes_gcm_hkdf_streaming_key_template(
            int(key_size), HASHES[hkdf_hash], int(derived), int(segment))
    if parts[0] == "ctr":
        key_size, hkdf_hash, derived, mac_hash, tag_size, segment = parts[1:]
        return TEMPLATES.create_aes_ctr_hmac_streaming_key_template(
            int(key_size), HASHES[hkdf_hash], int(derived), HASHES[mac_hash], int(tag_size), int(segment))
    return getattr(TEMPLATES, spec)


def to_json(handle):
    return json.loads(tink.json_proto_keyset_format.serialize(handle, secret_key_access.TOKEN))


def read_handle(path):
    with open(path) as f:
        return tink.json_proto_keyset_format.parse(f.read(), secret_key_access.TOKEN)


def keygen(out, specs, primary):
    keys = []
    for spec in specs:
        keys.extend(to_json(tink.new_keyset_handle(template(spec)))["key"])
    keyset = {"primaryKeyId": keys[primary]["keyId"], "key": keys}
    # Round-trip through Tink's own parser so the file is exactly what Tink accepts.
    handle = tink.json_proto_keyset_format.parse(json.dumps(keyset), secret_key_access.TOKEN)
    with open(out, "w") as f:
        f.write(tink.json_proto_keyset_format.serialize(handle, secret_key_access.TOKEN))
    # The same keyset in Tink's binary form, next to it.
    with open(out + ".bin", "wb") as f:
        f.write(tink.proto_keyset_format.serialize(handle, secret_key_access.TOKEN))


def primitive(keyset_path):
    return read_handle(keyset_path).primitive(streaming_aead.StreamingAead)


def encrypt(keyset_path, aad, src, dst):
    saead = primitive(keyset_path)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        with saead.new_encrypting_stream(fout, aad) as enc:
            while True:
                block = fin.read(1 << 20)
                if not block:
                    break
                enc.write(block)


def decrypt(keyset_path, aad, src, dst):
    saead = primitive(keyset_path)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        with saead.new_decrypting_stream(fin, aad) as dec:
            while True:
                block = dec.read(1 << 20)
                if not block:
                    break
                fout.write(block)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    command, args = argv[1], argv[2:]
    if command == "keygen":
        primary = 0
        if "--primary" in args:
            i = args.index("--primary")
            primary = int(args[i + 1])
            del args[i:i + 2]
        keygen(args[0], args[1:], primary)
    elif command == "batch":
        with open(args[0]) as f:
            ops = json.load(f)
        results = []
        for op in ops:
            run = encrypt if op["op"] == "encrypt" else decrypt
            try:
                run(op["keyset"], bytes.fromhex(op["aad_hex"]), op["in"], op["out"])
                results.append({"ok": True, "error": ""})
            except tink.TinkError as e:
                results.append({"ok": False, "error": str(e)})
        print(json.dumps(results))
    elif command in ("encrypt", "decrypt"):
        keyset_path, aad_hex, src, dst = args
        aad = bytes.fromhex(aad_hex)
        try:
            (encrypt if command == "encrypt" else decrypt)(keyset_path, aad, src, dst)
        except tink.TinkError as e:
            sys.exit(f"tink {command} failed: {e}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
