"""Stream plumbing: the faust app, topic definitions and the Avro wire format."""
