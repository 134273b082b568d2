"""The pure domain: shapes, request rules, the status machine, typed errors, and the executor's decision. No I/O, no clocks."""
