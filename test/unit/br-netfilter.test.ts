// What the agent says about br_netfilter, from the sysctl file's content (or its absence).
import { describe, expect, it } from "vitest";
import { brNetfilterProblem } from "../../src/node/br-netfilter.js";

describe("brNetfilterProblem", () => {
  it.each([
    { content: "1\n", expected: undefined },
    { content: "1", expected: undefined },
    {
      content: "0\n",
      expected:
        /net\.bridge\.bridge-nf-call-iptables is 0, not 1: .*sysctl -w net\.bridge\.bridge-nf-call-iptables=1/,
    },
    { content: "", expected: /is empty, not 1/ },
    { content: undefined, expected: /br_netfilter module is not loaded .*modprobe br_netfilter/ },
  ])("$content → $expected", ({ content, expected }) => {
    const problem = brNetfilterProblem(content);
    if (expected === undefined) expect(problem).toBeUndefined();
    else expect(problem).toMatch(expected);
  });

  it("says what breaks, so an operator can judge whether it matters to them", () => {
    expect(brNetfilterProblem("0")).toContain("Service");
    expect(brNetfilterProblem(undefined)).toContain("Service");
  });
});
