// Listen addresses for the agent's HTTP endpoints (--metrics-address, --healthz-ip/--healthz-port).
export interface ListenAddress {
  /** IP to bind; "" = every address (IPv4 and IPv6 where available). */
  readonly host: string;
  readonly port: number;
}

/** Parses "IP:PORT", "[IPv6]:PORT" or ":PORT"; throws an Error saying what is wrong. */
export function parseListenAddress(text: string): ListenAddress {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]*)):(\d{1,5})$/.exec(text);
  if (!match) throw new Error(`"${text}" is not an address (use IP:PORT, [IPv6]:PORT or :PORT)`);
  const host = match[1] ?? match[2] ?? "";
  const port = Number(match[3]);
  if (port > 65535) throw new Error(`"${text}": port ${port} is out of range (0 to 65535)`);
  if (match[2] !== undefined && match[2] !== "" && !/^(\d{1,3})(\.\d{1,3}){3}$/.test(host)) {
    throw new Error(`"${text}": "${host}" is not an IPv4 address`);
  }
  return { host, port };
}

export function formatListenAddress(address: ListenAddress): string {
  return `${address.host.includes(":") ? `[${address.host}]` : address.host}:${address.port}`;
}
