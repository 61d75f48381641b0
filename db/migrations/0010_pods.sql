-- Event-sharded pods (gateway/shard_map.py, docs/scaling.md). A pod's database records its name and the
-- buckets of the shard map it owns; `gateway pods init` fills these tables and attaches the fence triggers.
-- A database that is not a pod's (the default) keeps them empty and has no trigger: its claims pay nothing.
CREATE TABLE pod_identity (
    id      boolean NOT NULL DEFAULT true,  -- one row per database
    pod     text    NOT NULL,               -- this database's pod in the shard map
    buckets integer NOT NULL,               -- the shard map's bucket count
    CONSTRAINT pod_identity_pkey PRIMARY KEY (id),
    CONSTRAINT pod_identity_one_row CHECK (id),
    CONSTRAINT pod_identity_buckets_check CHECK (buckets >= 1)
);

CREATE TABLE pod_buckets (
    bucket      integer NOT NULL,
    map_version bigint  NOT NULL,           -- the map version that gave this pod the bucket
    CONSTRAINT pod_buckets_pkey PRIMARY KEY (bucket)
);

-- An event's bucket: the first 32 bits of md5(event_id) modulo the bucket count (shard_map.bucket_of).
CREATE FUNCTION gateway_bucket(event_id text, buckets integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (('x' || substr(md5(event_id), 1, 8))::bit(32)::bigint % buckets)::integer;

-- The fence, on every seat and pool row a claim writes: the event's bucket must be this pod's now, checked in
-- the claim's own transaction. The KEY SHARE lock makes a bucket's move (which deletes its row) wait for the
-- claims in flight, and then see their holds. SQLSTATE GWPOD: the gateway answers 503 stale-shard-map.
CREATE FUNCTION gateway_pod_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    identity pod_identity;
    event_bucket integer;
BEGIN
    SELECT * INTO identity FROM pod_identity;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this database has the pod fence but no pod identity' USING ERRCODE = 'GWPOD';
    END IF;
    event_bucket := gateway_bucket(NEW.event_id, identity.buckets);
    PERFORM 1 FROM pod_buckets WHERE bucket = event_bucket FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event % is in bucket %, which pod % does not own', NEW.event_id, event_bucket, identity.pod
            USING ERRCODE = 'GWPOD';
    END IF;
    RETURN NEW;
END
$$;
