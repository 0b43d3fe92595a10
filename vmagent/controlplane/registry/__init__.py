"""The service registry: services and endpoints from ServiceEntry + WorkloadEntry (:mod:`.services`), the
auto-registered WorkloadEntries (:mod:`.workload_store`, :mod:`.workload_entry`) and the agents'
registration streams (:mod:`.registration`)."""
