// WireGuard keys: the text form (decode/encode), `wg genkey`'s clamping, `wg pubkey`'s arithmetic (checked
// against the real wg), the UAPI's hex; and the node's key file (made, read, renewed, taken over from
// flanneld; a bad one named with its path and the fix).
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  currentKeyInFile,
  DEFAULT_KEY_FILE_NAME,
  FLANNEL_KEY_FILE,
  KEY_FILE_VARIABLE,
  keyFilePath,
  loadOrCreateKey,
  parseKeyFile,
} from "../../src/backends/wireguard/key-file.js";
import {
  decodeKey,
  encodeKey,
  generatePrivateKey,
  keyFromHex,
  keyHex,
  publicKeyOf,
} from "../../src/backends/wireguard/keys.js";

const WG = "/usr/bin/wg";
const KEY_TEXT = /^[A-Za-z0-9+/]{43}=$/;

/** What `wg pubkey` prints for a private key (base64 text). */
function wgPubkey(privateKey: string): string {
  return execFileSync(WG, ["pubkey"], { input: `${privateKey}\n`, encoding: "utf8" }).trim();
}

/** A fixed "random" source: byte i is (seed + i * step) mod 256. */
const pattern =
  (seed: number, step = 1) =>
  (n: number): Buffer =>
    Buffer.from(Array.from({ length: n }, (_, i) => (seed + i * step) & 0xff));

describe("decodeKey / encodeKey", () => {
  it.each([
    ["", "it is empty"],
    ["   \n", "it is empty"],
    // Never the text itself: it may be a private key slightly off.
    ["abc", "its 3 characters are not a WireGuard key (44 characters of base64, as wg genkey prints)"],
    // 44 characters, but without the padding "=".
    [
      "A".repeat(44),
      "its 44 characters are not a WireGuard key (44 characters of base64, as wg genkey prints)",
    ],
    // 43 + "=", but base64url characters, not base64.
    [
      `${"-".repeat(43)}=`,
      "its 44 characters are not a WireGuard key (44 characters of base64, as wg genkey prints)",
    ],
    // 33 bytes of base64 (a key is 32).
    [
      Buffer.alloc(33, 1).toString("base64"),
      "its 44 characters are not a WireGuard key (44 characters of base64, as wg genkey prints)",
    ],
    [
      "x".repeat(100),
      "its 100 characters are not a WireGuard key (44 characters of base64, as wg genkey prints)",
    ],
  ])("refuses %j: %s", (text, why) => {
    expect(decodeKey(text)).toBe(why);
  });

  it("decodes a key, ignoring the newline wg genkey prints", () => {
    const bytes = pattern(3, 7)(32);
    const decoded = decodeKey(`  ${bytes.toString("base64")}\n`);
    expect(Buffer.isBuffer(decoded)).toBe(true);
    expect((decoded as Buffer).equals(bytes)).toBe(true);
  });

  it("encodes 32 bytes as 44 characters of standard base64", () => {
    expect(encodeKey(Buffer.alloc(32))).toBe(`${"A".repeat(43)}=`);
    expect(encodeKey(Buffer.alloc(32, 0xff))).toBe(`${"/".repeat(42)}8=`);
    const bytes = pattern(200, 13)(32);
    expect(decodeKey(encodeKey(bytes))).toEqual(bytes);
  });
});

describe("generatePrivateKey", () => {
  it.each([
    ["all ones", 0xff, 0xff & 248, (0xff & 127) | 64],
    ["all zeros", 0x00, 0x00, 64],
    ["0x87", 0x87, 0x80, 0x47],
  ])("clamps %s as wg genkey does", (_name, fill, first, last) => {
    const key = generatePrivateKey((n) => Buffer.alloc(n, fill));
    expect(key.length).toBe(32);
    expect(key[0]).toBe(first);
    expect(key[31]).toBe(last);
    // The bytes between are the random ones, untouched.
    expect([...key.subarray(1, 31)]).toEqual(new Array<number>(30).fill(fill));
  });

  it("does not change the buffer the random source returned", () => {
    const source = Buffer.alloc(32, 0xff);
    generatePrivateKey(() => source);
    expect(source[0]).toBe(0xff);
    expect(source[31]).toBe(0xff);
  });

  it("makes a different key each time from the real random source", () => {
    const a = encodeKey(generatePrivateKey());
    const b = encodeKey(generatePrivateKey());
    expect(a).toMatch(KEY_TEXT);
    expect(a).not.toBe(b);
  });
});

describe("publicKeyOf matches wg pubkey", () => {
  const keys: [string, string][] = [
    ["a clamped pattern key", encodeKey(generatePrivateKey(pattern(1)))],
    ["another clamped pattern key", encodeKey(generatePrivateKey(pattern(0x5a, 31)))],
    // wg pubkey clamps before it multiplies; so must we.
    ["an unclamped key (all 0xff)", encodeKey(Buffer.alloc(32, 0xff))],
    ["a fresh random key", encodeKey(generatePrivateKey())],
    ["a key wg genkey made", execFileSync(WG, ["genkey"], { encoding: "utf8" }).trim()],
  ];

  it.each(keys)("for %s", (_name, privateKey) => {
    const publicKey = encodeKey(publicKeyOf(Buffer.from(privateKey, "base64")));
    expect(publicKey).toMatch(KEY_TEXT);
    expect(publicKey).toBe(wgPubkey(privateKey));
  });

  it("is the known public key of a published test vector (RFC 7748, Alice)", () => {
    const alice = Buffer.from("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", "hex");
    expect(publicKeyOf(alice).toString("hex")).toBe(
      "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    );
  });
});

describe("keyHex / keyFromHex", () => {
  it.each([
    ["zeros", Buffer.alloc(32)],
    ["a pattern", pattern(9, 5)(32)],
    ["ones", Buffer.alloc(32, 0xff)],
  ])("round-trips %s through the UAPI's hex", (_name, bytes) => {
    const text = encodeKey(bytes);
    const hex = keyHex(text);
    expect(hex).toBe(bytes.toString("hex"));
    expect(hex).toMatch(/^[0-9a-f]{64}$/);
    expect(keyFromHex(hex)).toBe(text);
  });
});

describe("the node's key file", () => {
  const dirs: string[] = [];
  afterEach(async () => {
    await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
  });

  async function tempDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), "twill-wgkey-"));
    dirs.push(dir);
    return dir;
  }

  /** A place for flanneld's key file that does not exist (never the host's /run/flannel/wgkey). */
  const noFlannel = (dir: string): string => join(dir, "no-flannel", "wgkey");

  it("makes a key on the first start: a 0400 file holding it in base64; then reads the same key", async () => {
    const dir = await tempDir();
    const path = join(dir, "state", "wireguard.key");
    const first = await loadOrCreateKey(path, { flannelKeyFile: noFlannel(dir) });
    expect(first.origin).toBe("first-start");
    expect(first.path).toBe(path);
    expect(first.privateKey).toMatch(KEY_TEXT);
    expect(first.publicKey).toBe(wgPubkey(first.privateKey));
    expect((await stat(path)).mode & 0o777).toBe(0o400);
    expect((await readFile(path, "utf8")).trim()).toBe(first.privateKey);
    // It is a clamped key, as wg genkey makes.
    const bytes = Buffer.from(first.privateKey, "base64");
    expect((bytes[0] ?? 0) & 7).toBe(0);
    expect((bytes[31] ?? 0) & 0xc0).toBe(0x40);

    const second = await loadOrCreateKey(path, { flannelKeyFile: noFlannel(dir) });
    expect(second).toEqual({ ...first, origin: "persisted" });
  });

  it("renews: writes a new key over the old one", async () => {
    const dir = await tempDir();
    const path = join(dir, "wireguard.key");
    const first = await loadOrCreateKey(path, { flannelKeyFile: noFlannel(dir) });
    const renewed = await loadOrCreateKey(path, { renew: true, flannelKeyFile: noFlannel(dir) });
    expect(renewed.origin).toBe("renewed");
    expect(renewed.privateKey).not.toBe(first.privateKey);
    expect(renewed.publicKey).toBe(wgPubkey(renewed.privateKey));
    expect((await readFile(path, "utf8")).trim()).toBe(renewed.privateKey);
    expect((await stat(path)).mode & 0o777).toBe(0o400);
    const after = await loadOrCreateKey(path, { flannelKeyFile: noFlannel(dir) });
    expect(after.origin).toBe("persisted");
    expect(after.privateKey).toBe(renewed.privateKey);
  });

  it("takes over the key flanneld left, so the node keeps its public key", async () => {
    const dir = await tempDir();
    const flannelKeyFile = join(dir, "run-flannel", "wgkey");
    const flannelKey = execFileSync(WG, ["genkey"], { encoding: "utf8" }).trim();
    await mkdir(join(dir, "run-flannel"));
    await writeFile(flannelKeyFile, `${flannelKey}\n`, { mode: 0o400 });
    const path = join(dir, "state", "wireguard.key");
    const adopted = await loadOrCreateKey(path, { flannelKeyFile });
    expect(adopted).toEqual({
      privateKey: flannelKey,
      publicKey: wgPubkey(flannelKey),
      path,
      origin: "adopted",
    });
    // Copied into twill's own file (which survives reboots), 0400.
    expect((await readFile(path, "utf8")).trim()).toBe(flannelKey);
    expect((await stat(path)).mode & 0o777).toBe(0o400);
    const again = await loadOrCreateKey(path, { flannelKeyFile });
    expect(again.origin).toBe("persisted");
    expect(again.privateKey).toBe(flannelKey);
  });

  it("prefers its own key file to flanneld's", async () => {
    const dir = await tempDir();
    const path = join(dir, "wireguard.key");
    const own = await loadOrCreateKey(path, { flannelKeyFile: noFlannel(dir) });
    const flannelKeyFile = join(dir, "flannel-wgkey");
    await writeFile(flannelKeyFile, execFileSync(WG, ["genkey"], { encoding: "utf8" }));
    const read = await loadOrCreateKey(path, { flannelKeyFile });
    expect(read.origin).toBe("persisted");
    expect(read.privateKey).toBe(own.privateKey);
  });

  it("makes a new key rather than taking over a broken flanneld key file", async () => {
    const dir = await tempDir();
    const flannelKeyFile = join(dir, "flannel-wgkey");
    await writeFile(flannelKeyFile, "garbage\n");
    const path = join(dir, "wireguard.key");
    const key = await loadOrCreateKey(path, { flannelKeyFile });
    expect(key.origin).toBe("first-start");
    expect(key.privateKey).toMatch(KEY_TEXT);
  });

  it.each([
    ["junk", "not a key\n", "its 9 characters are not a WireGuard key"],
    ["an empty file", "", "it is empty"],
    ["a key cut short", "mNb7OIIXTdgW4khM7OFlzJ+UPs7lmcW=", "its 32 characters are not a WireGuard key"],
  ])("refuses %s, naming the file, what is wrong and the fix", async (_name, content, why) => {
    const dir = await tempDir();
    const path = join(dir, "wireguard.key");
    await writeFile(path, content);
    const error = await loadOrCreateKey(path, { flannelKeyFile: noFlannel(dir) }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(Error);
    const message = (error as Error).message;
    expect(message).toContain(`WireGuard private key file ${path}: `);
    expect(message).toContain(why);
    expect(message).toContain(`wg genkey > ${path}`);
    // The bad file is left for the operator, not overwritten.
    expect(await readFile(path, "utf8")).toBe(content);
  });

  it("says it cannot read a key file that is not a file", async () => {
    const dir = await tempDir();
    const path = join(dir, "wireguard.key");
    await mkdir(path);
    await expect(loadOrCreateKey(path, { flannelKeyFile: noFlannel(dir) })).rejects.toThrow(
      `WireGuard private key file ${path}: cannot read it (`,
    );
  });

  it("parseKeyFile gives the key in WireGuard's text form", () => {
    const key = encodeKey(pattern(4, 3)(32));
    expect(parseKeyFile(`${key}\n`, "/x")).toBe(key);
    expect(() => parseKeyFile("nope", "/etc/wg.key")).toThrow(
      /^WireGuard private key file \/etc\/wg\.key: its 4 characters are not a WireGuard key/,
    );
  });

  it("currentKeyInFile reads the key now in the file, or undefined for none or junk", async () => {
    const dir = await tempDir();
    const path = join(dir, "wireguard.key");
    expect(await currentKeyInFile(path)).toBeUndefined();
    await writeFile(path, "junk");
    expect(await currentKeyInFile(path)).toBeUndefined();
    const key = encodeKey(generatePrivateKey());
    await writeFile(path, `${key}\n`);
    expect(await currentKeyInFile(path)).toBe(key);
  });
});

describe("keyFilePath", () => {
  it.each([
    ["the flag first", "/etc/twill/wg.key", { [KEY_FILE_VARIABLE]: "/env/wg.key" }, "/etc/twill/wg.key"],
    ["then $WIREGUARD_KEY_FILE", "", { [KEY_FILE_VARIABLE]: "/env/wg.key" }, "/env/wg.key"],
    [
      "an empty variable counts as unset",
      "",
      { [KEY_FILE_VARIABLE]: "" },
      `/var/lib/twill/${DEFAULT_KEY_FILE_NAME}`,
    ],
    ["else the state dir", "", {}, "/var/lib/twill/wireguard.key"],
  ])("%s", (_name, flag, env, want) => {
    expect(keyFilePath(flag, "/var/lib/twill", env)).toBe(want);
  });

  it("is flanneld's variable, and flanneld's default file is /run/flannel/wgkey", () => {
    expect(KEY_FILE_VARIABLE).toBe("WIREGUARD_KEY_FILE");
    expect(FLANNEL_KEY_FILE).toBe("/run/flannel/wgkey");
  });
});
