"""/v1/responses on top of chat completions: `request` (translation), `tools`, `output` (shaping),
`events` (the event-stream state machine), `compaction`, and the `fields` table."""
