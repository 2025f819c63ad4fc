// Which CNI spec version the agent's conflist declares: the newest one that every plugin it names
// speaks, from the plugins' own answers to the VERSION command. A conflist whose cniVersion a plugin
// does not support is refused by it (older containernetworking-plugins speak at most 0.4.0 or 0.3.1).
// Pure: src/cni/probe.ts runs the plugins and hands their answers here.
import { parseJsonObject } from "./json.js";
import { errorMessage } from "../util/log.js";

/** What the conflist declares when the plugins cannot tell: today's plugins (v1.x) all speak it. */
export const DEFAULT_CNI_VERSION = "1.0.0";

/**
 * The versions the conflist may declare, newest first. 0.3.1 is the oldest with what the conflist
 * needs (plugin lists with prevResult for portmap, host-local's ranges); CHECK needs 0.4.0.
 */
export const CNI_VERSION_CHOICES: readonly string[] = ["1.0.0", "0.4.0", "0.3.1"];

/** The plugins twill's conflist runs (bridge with host-local IPAM, then portmap). */
export const TWILL_CONFLIST_PLUGINS: readonly string[] = ["bridge", "host-local", "portmap"];

/** One plugin's answer: the versions it supports, or why there are none to read. */
export type PluginVersionAnswer =
  | { readonly plugin: string; readonly path: string; readonly supported: readonly string[] }
  | {
      readonly plugin: string;
      /** The executable, when one was found (undefined: not found in any dir). */
      readonly path: string | undefined;
      readonly problem: string;
    };

export interface CniVersionChoice {
  readonly version: string;
  /** true: every plugin answered and `version` is the newest they all speak; false: the default is kept. */
  readonly chosen: boolean;
  /** Why the default was kept, one entry per plugin concerned; empty when chosen. */
  readonly problems: readonly { readonly plugin: string; readonly problem: string }[];
}

/**
 * A plugin's VERSION output: {"cniVersion":"1.0.0","supportedVersions":["0.1.0",…]}. Returns the
 * supported versions, or a string saying what is wrong with the output.
 */
export function parseVersionAnswer(stdout: string): readonly string[] | string {
  let answer;
  try {
    answer = parseJsonObject(stdout, "VERSION output");
  } catch (error) {
    return errorMessage(error);
  }
  const supported = answer.supportedVersions;
  if (!Array.isArray(supported) || supported.length === 0) {
    return `VERSION output has no "supportedVersions" list: ${stdout.trim().slice(0, 200)}`;
  }
  // (A plugin that answers with an error object, code and msg, has no list: caught above.)
  if (!supported.every((v): v is string => typeof v === "string")) {
    return `VERSION output's "supportedVersions" holds something other than version strings`;
  }
  return supported;
}

/**
 * The newest of CNI_VERSION_CHOICES that every plugin supports. When a plugin was not found or did not
 * answer, or the plugins share none of the choices, DEFAULT_CNI_VERSION is kept and `problems` say why.
 */
export function chooseCniVersion(answers: readonly PluginVersionAnswer[]): CniVersionChoice {
  const unanswered = answers.flatMap((a) =>
    "problem" in a ? [{ plugin: a.plugin, problem: a.problem }] : [],
  );
  if (unanswered.length > 0) return { version: DEFAULT_CNI_VERSION, chosen: false, problems: unanswered };
  const supported = answers.flatMap((a) => ("supported" in a ? [a] : []));
  const version = CNI_VERSION_CHOICES.find((v) => supported.every((a) => a.supported.includes(v)));
  if (version !== undefined) return { version, chosen: true, problems: [] };
  // Each plugin is named with what it speaks: the operator sees which one is too old (or which two
  // disagree, e.g. one plugin 1.0.0 only and another 0.4.0 at most).
  const none = `no version among ${CNI_VERSION_CHOICES.join(", ")} that every plugin supports`;
  return {
    version: DEFAULT_CNI_VERSION,
    chosen: false,
    problems: supported.map((a) => ({
      plugin: a.plugin,
      problem: `${none}; it supports ${a.supported.join(", ")}`,
    })),
  };
}
