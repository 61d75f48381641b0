-- Indexes for the operations reads: holds listed in expiry order (all, by event, by holder), and every slot
-- row of an event (the seat map). Each is a keyset scan: `(expires_at, id) > cursor ORDER BY expires_at, id`.

CREATE INDEX holds_expires_at_id_idx ON holds (expires_at, id);
CREATE INDEX holds_event_id_expires_at_id_idx ON holds (event_id, expires_at, id);
CREATE INDEX holds_holder_expires_at_id_idx ON holds (holder, expires_at, id);

-- The seat map walks an event's slot rows in slot order; status is included so that counting an event's
-- slots by state reads the index alone.
CREATE INDEX hold_slots_event_id_slot_id_idx ON hold_slots (event_id, slot_id) INCLUDE (status, expires_at);
