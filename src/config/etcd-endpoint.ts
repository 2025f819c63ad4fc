// What an etcd endpoint must look like, checked by the flag parser (exit 2) and the etcd client (the
// admin commands): one rule, in the config layer, so the lease shell need not import agent options.

/** An etcd client URL as flanneld takes it: scheme, host and port, nothing after. */
const ETCD_ENDPOINT = /^https?:\/\/[^/]+\/?$/;

/** Why `endpoint` is not a usable etcd URL, or undefined when it is. */
export function etcdEndpointProblem(endpoint: string): string | undefined {
  return ETCD_ENDPOINT.test(endpoint)
    ? undefined
    : `"${endpoint}" is not a URL of the form http(s)://host:port`;
}
