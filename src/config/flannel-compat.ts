// flanneld settings twill does not implement, handled the same way whether they come as a flag or as a
// FLANNELD_ variable: set to flanneld's default (a unit file that spells out every flag) they are
// ignored with a warning; set to anything else they are refused, saying what to do instead. Without
// this, FLANNELD_KUBE_SUBNET_MGR=true would be ignored silently while --kube-subnet-mgr is refused.
import { envName, FlagError, parseBoolText } from "./flags.js";

const KUBE_INSTEAD =
  "twill has no Kubernetes subnet manager: it keeps the leases in etcd, as flanneld does without " +
  "--kube-subnet-mgr. Remove this setting and point --etcd-endpoints at an etcd of the cluster's own " +
  "(docs/operations.md, 'Which etcd')";

interface Unsupported {
  readonly name: string;
  readonly bool: boolean;
  /** flanneld's default, as text: that value is harmless. */
  readonly flannelDefault: string;
  readonly instead: string;
}

const UNSUPPORTED: readonly Unsupported[] = [
  { name: "kube-subnet-mgr", bool: true, flannelDefault: "false", instead: KUBE_INSTEAD },
  { name: "kube-api-url", bool: false, flannelDefault: "", instead: KUBE_INSTEAD },
  { name: "kubeconfig-file", bool: false, flannelDefault: "", instead: KUBE_INSTEAD },
  {
    name: "kube-annotation-prefix",
    bool: false,
    flannelDefault: "flannel.alpha.coreos.com",
    instead: KUBE_INSTEAD,
  },
  { name: "set-node-network-unavailable", bool: true, flannelDefault: "true", instead: KUBE_INSTEAD },
  {
    name: "net-config-path",
    bool: false,
    flannelDefault: "/etc/kube-flannel/net-conf.json",
    instead:
      "twill reads the network config from etcd (<prefix>/config); store it with `twill config set FILE`",
  },
];

function isDefault(spec: Unsupported, value: string): boolean {
  if (!spec.bool) return value === spec.flannelDefault;
  // Not a boolean at all is not the default either: refused, like any other value.
  return String(parseBoolText(value)) === spec.flannelDefault;
}

/** The agent's arguments without the flanneld flags that are ignored, and what to warn about. */
export interface FlannelCompat {
  readonly argv: readonly string[];
  readonly warnings: readonly string[];
}

/**
 * Takes the unsupported flanneld settings out of `argv` and looks at the FLANNELD_ variables: throws a
 * FlagError for one that asks for a mode twill lacks; warns about one set to flanneld's default and
 * about FLANNELD_ variables that are no flanneld setting at all.
 */
export function flannelCompat(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  /** The flanneld flags twill implements (their FLANNELD_ variables are honoured). */
  implemented: readonly string[],
): FlannelCompat {
  const byName = new Map(UNSUPPORTED.map((spec) => [spec.name, spec]));
  const kept: string[] = [];
  const warnings: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--") {
      kept.push(...argv.slice(i));
      break;
    }
    const match = /^--?([^=]+)(?:=(.*))?$/.exec(arg);
    const spec = match?.[1] === undefined ? undefined : byName.get(match[1]);
    if (spec === undefined) {
      kept.push(arg);
      continue;
    }
    let value = match?.[2];
    if (value === undefined) {
      if (spec.bool) value = "true";
      else {
        value = argv[i + 1] ?? "";
        i++;
      }
    }
    if (!isDefault(spec, value)) throw new FlagError(`--${spec.name}=${value}: ${spec.instead}`);
    warnings.push(`--${spec.name}=${value} is flanneld's default for a mode twill does not have; ignored`);
  }
  for (const spec of UNSUPPORTED) {
    const variable = envName("FLANNELD_", spec.name);
    const value = env[variable];
    if (value === undefined) continue;
    if (!isDefault(spec, value)) throw new FlagError(`${variable}=${value}: ${spec.instead}`);
    warnings.push(`${variable}=${value} is flanneld's default for a mode twill does not have; ignored`);
  }
  const known = new Set([
    ...implemented.map((name) => envName("FLANNELD_", name)),
    ...UNSUPPORTED.map((spec) => envName("FLANNELD_", spec.name)),
  ]);
  for (const variable of Object.keys(env).sort()) {
    if (variable.startsWith("FLANNELD_") && !known.has(variable)) {
      warnings.push(`${variable} is not a flanneld setting twill knows (a typo?); ignored`);
    }
  }
  return { argv: kept, warnings };
}
