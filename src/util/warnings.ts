// Where Node's process warnings go.
/**
 * Node's process warnings go to `sink` instead of a plain stderr line (which breaks a JSON log
 * pipeline), except DEP0123: etcd3 sets the TLS ServerName to the endpoint's IP for every https://<IP>
 * endpoint, and Node warns about that on each connection although the certificate check is unchanged.
 */
export function routeWarnings(sink: (warning: Error & { code?: string }) => void): void {
  process.removeAllListeners("warning");
  process.on("warning", (warning: Error & { code?: string }) => {
    if (warning.code !== "DEP0123") sink(warning);
  });
}
