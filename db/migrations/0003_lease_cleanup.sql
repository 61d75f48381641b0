-- What keeps Redis from lying after a fault: leases of cancelled holds that are still to be released in Redis
-- (an outbox drained by the sweeper), and indexes for rebuilding and cleaning Redis after it restarts.

-- Set by a cancel whose lease must still be dropped in Redis: the gateway may die, or lose Redis, between the
-- commit and the release. The sweeper releases the lease and clears the flag.
ALTER TABLE holds ADD COLUMN lease_release_due boolean NOT NULL DEFAULT false;
CREATE INDEX holds_lease_release_due_idx ON holds (id) WHERE lease_release_due;

-- After a Redis restart: holds cancelled while their lease could still be alive in a reloaded snapshot, and
-- the confirmed holds whose leases are rebuilt.
CREATE INDEX holds_cancelled_at_idx ON holds (cancelled_at) WHERE status = 'cancelled';
CREATE INDEX holds_confirmed_at_idx ON holds (confirmed_at) WHERE status = 'confirmed';
