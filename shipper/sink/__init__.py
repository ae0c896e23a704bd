"""The database side: schema, delivery of batches, and how failures are classified."""
