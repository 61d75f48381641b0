-- The background leader: which worker of which replica runs the database's background work (the sweeper, the
-- hold event sequencer, the outbox drains, the purges), elected through this one row (gateway.leader).
--
-- A lease, not a session advisory lock: a leader that is frozen (SIGSTOP, a long GC or VM pause) keeps its
-- TCP connection and so would keep a session lock for ever; its lease runs out by the database's clock and
-- another worker takes over. Times are the database's (now()), so the replicas' clocks never matter.

CREATE TABLE background_leader (
    id          boolean     NOT NULL DEFAULT true,  -- one row per database
    holder      text        NOT NULL,               -- the leading worker's id (gateway.leader.worker_id)
    term        bigint      NOT NULL,               -- counts handovers: a new holder is a new term
    redis_ok    boolean     NOT NULL,               -- whether the holder reached Redis when it last renewed
    acquired_at timestamptz NOT NULL,               -- when this holder took over
    expires_at  timestamptz NOT NULL,               -- past it, any worker may take over
    CONSTRAINT background_leader_pkey PRIMARY KEY (id),
    CONSTRAINT background_leader_one_row CHECK (id)
);
