// The results channel between the test run inside L1 (test/l1/reporter.ts) and the host's run
// (test/in-l1.test.ts): one JSON object per line.
export interface L1Error {
  message: string;
  stack?: string;
  diff?: string;
}

export type L1Event =
  | { t: 'start'; file: string; path: string[] }
  | { t: 'test'; file: string; path: string[]; state: string; ms?: number; errors: L1Error[] }
  | { t: 'suite'; file: string; path: string[]; errors: L1Error[] }
  | { t: 'module'; file: string; state: string; errors: L1Error[] }
  | { t: 'end'; errors: L1Error[] };
