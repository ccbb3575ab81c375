//! The Ferry gateway agent. Ingest, store and API land with issues 3 and 5.
