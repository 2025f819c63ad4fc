// WireGuard keys: Curve25519 keys as `wg genkey` / `wg pubkey` make them, in WireGuard's text form
// (32 bytes, standard base64, 44 characters). Node's crypto does the X25519 arithmetic, so no `wg`
// binary is needed to make or read a key.
import { createPrivateKey, createPublicKey, randomBytes } from "node:crypto";

const KEY_BYTES = 32;
/** The DER prefix of a PKCS#8 X25519 private key; the 32 raw bytes follow. */
const PKCS8_X25519_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");

/** A key in WireGuard's text form → its 32 bytes, or why it is not one (for an error naming where it came from). */
export function decodeKey(text: string): Buffer | string {
  const trimmed = text.trim();
  if (trimmed === "") return "it is empty";
  // Never quoted: the text may be a private key that is only slightly off (no "=", a wg-quick line).
  if (!/^[A-Za-z0-9+/]{43}=$/.test(trimmed)) {
    return `its ${trimmed.length} characters are not a WireGuard key (44 characters of base64, as wg genkey prints)`;
  }
  return Buffer.from(trimmed, "base64");
}

export function encodeKey(bytes: Buffer): string {
  return bytes.toString("base64");
}

/** A new private key, clamped as `wg genkey` clamps it. */
export function generatePrivateKey(random: (n: number) => Buffer = randomBytes): Buffer {
  const key = Buffer.from(random(KEY_BYTES));
  key[0] = (key[0] ?? 0) & 248;
  key[31] = ((key[31] ?? 0) & 127) | 64;
  return key;
}

/** The public key of a private key, as `wg pubkey` prints it. */
export function publicKeyOf(privateKey: Buffer): Buffer {
  const key = createPrivateKey({
    key: Buffer.concat([PKCS8_X25519_PREFIX, privateKey]),
    format: "der",
    type: "pkcs8",
  });
  const spki = createPublicKey(key).export({ format: "der", type: "spki" });
  return Buffer.from(spki.subarray(spki.length - KEY_BYTES));
}

/** Hex, as WireGuard's configuration protocol (UAPI) carries keys. */
export function keyHex(base64: string): string {
  return Buffer.from(base64, "base64").toString("hex");
}

/** From the UAPI's hex back to WireGuard's text form. */
export function keyFromHex(hex: string): string {
  return Buffer.from(hex, "hex").toString("base64");
}
