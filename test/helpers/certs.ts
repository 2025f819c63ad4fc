// A throwaway PKI made with openssl for TLS tests: a CA, a server certificate for an IP, a client
// certificate, and a second, unrelated CA (to test "wrong CA").
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestPki {
  readonly dir: string;
  readonly caFile: string;
  readonly otherCaFile: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
  readonly clientCertFile: string;
  readonly clientKeyFile: string;
  destroy(): void;
}

function openssl(args: readonly string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

function makeCa(dir: string, name: string): void {
  openssl(
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.crt`,
    ],
    dir,
  );
}

function makeLeaf(dir: string, name: string, ca: string, ext: string): void {
  openssl(
    [
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
    ],
    dir,
  );
  openssl(
    [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${ca}.crt`,
      "-CAkey",
      `${ca}.key`,
      "-CAcreateserial",
      "-days",
      "2",
      "-out",
      `${name}.crt`,
      "-extfile",
      ext,
    ],
    dir,
  );
}

export function makePki(serverIp: string): TestPki {
  const dir = mkdtempSync(join(tmpdir(), "twill-pki-"));
  try {
    makeCa(dir, "ca");
    makeCa(dir, "other-ca");
    execFileSync(
      "sh",
      [
        "-c",
        `printf 'subjectAltName=IP:${serverIp}\\nextendedKeyUsage=serverAuth\\n' > server.ext; printf 'extendedKeyUsage=clientAuth\\n' > client.ext`,
      ],
      { cwd: dir },
    );
    makeLeaf(dir, "server", "ca", "server.ext");
    makeLeaf(dir, "client", "ca", "client.ext");
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    dir,
    caFile: join(dir, "ca.crt"),
    otherCaFile: join(dir, "other-ca.crt"),
    serverCertFile: join(dir, "server.crt"),
    serverKeyFile: join(dir, "server.key"),
    clientCertFile: join(dir, "client.crt"),
    clientKeyFile: join(dir, "client.key"),
    destroy: () => rmSync(dir, { recursive: true, force: true }),
  };
}
