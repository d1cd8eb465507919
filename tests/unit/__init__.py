"""Unit tier: the domain and the flows in memory (no database, no agent, no subprocess)."""
