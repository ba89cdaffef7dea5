import type { DockerClient } from '../engine/index.js';

export type ContenderId = 'raw' | 'haproxy' | 'guard' | 'dind-plain' | 'dind-berth';

/** One way of giving a job Docker, as the bench measures it. */
export interface Contender {
  readonly id: ContenderId;
  readonly title: string;
  /** DOCKER_HOST that reaches the daemon through this contender. */
  readonly dockerHost: string;
  /** A client bound to dockerHost. */
  readonly client: DockerClient;
  /** Whether this contender talks to the shared host daemon (false: its own nested daemon). */
  readonly shared: boolean;
  /** Process id of the proxy or sidecar init, when there is one (for memory readings). */
  readonly pid?: number | undefined;
  /** Time it took to become ready, when that is meaningful (nested daemons). */
  readonly readyMs?: number | undefined;
  stop(): Promise<void>;
}

export interface BenchOptions {
  quick: boolean;
  reps: number;
  /** Only these scenarios (ids); all when empty. */
  only: readonly string[];
  /** Only these contenders; all available when empty. */
  contenders: readonly ContenderId[];
  /** Size of the stream payloads in MiB (256 by default; smaller in quick mode). */
  payloadMiB: number;
  /** Size of the logs payload in MiB (100 by default). */
  logsMiB: number;
  /** Soak duration for the load scenario, seconds. */
  soakSeconds: number;
  /** Concurrent clients in the load scenario. */
  loadClients: number;
  outDir: string;
  log: (line: string) => void;
}

export interface Measurement {
  scenario: string;
  metric: string;
  unit: 'ms' | 'MiB/s' | 's' | 'count' | 'MiB' | 'MiB/min' | 'req/s' | 'streams/min';
  /** Lower is better for times, higher for throughputs. */
  better: 'lower' | 'higher';
  contender: ContenderId;
  samples: number[];
  /**
   * The round each sample was taken in (same index as `samples`). Contenders measured in the same
   * round ran back to back, so the report compares them pair by pair.
   */
  rounds?: number[];
  /**
   * 'raw': each sample is already this contender's difference from the raw socket, taken request
   * by request in the same cycle (the raw socket has no samples of it).
   */
  versus?: 'raw';
  note?: string;
}

export interface Scenario {
  readonly id: string;
  readonly title: string;
  /** Run once whatever the repetition count (long scenarios such as the soak). */
  readonly once?: boolean;
  /**
   * Rounds per repetition in a full run (1 by default): each round measures every contender once,
   * in a new random order. A single transfer's throughput varies by a fifth from one to the next on
   * a small VM, so a ratio to the raw socket needs many pairs before its interval is narrow.
   */
  readonly roundsPerRep?: number;
  /** Contenders it applies to (all by default). */
  readonly applies?: (c: Contender) => boolean;
  /** Once per contender before the repetitions. */
  prepare?(c: Contender, o: BenchOptions): Promise<void>;
  /**
   * In place of `prepare`: once for all the contenders, so that what it makes for each can be made
   * in turns. Answers, per contender that could not be prepared, why.
   */
  prepareTogether?(cs: readonly Contender[], o: BenchOptions): Promise<Map<ContenderId, Error>>;
  /** One repetition: returns metric -> value for this contender. */
  run(c: Contender, o: BenchOptions): Promise<Record<string, number>>;
  /**
   * One repetition over all the contenders at once, their requests taken in turn (in the order
   * given), in place of `run` for each: for latencies the engine's own drift between blocks of
   * requests is as large as what a proxy adds. Returns metric -> value per contender.
   */
  runTogether?(cs: readonly Contender[], o: BenchOptions): Promise<Map<ContenderId, Record<string, number>>>;
  /** Once per contender after the repetitions. */
  cleanup?(c: Contender, o: BenchOptions): Promise<void>;
  readonly metrics: Readonly<
    Record<string, { unit: Measurement['unit']; better: Measurement['better']; versus?: 'raw' }>
  >;
}
