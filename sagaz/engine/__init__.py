"""The saga engine: definitions, the pure decision core, the executor and crash recovery."""
