"""Ray shell: client actors, the aggregator actor and the experiment driver."""
