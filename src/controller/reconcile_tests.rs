// Table tests and property tests for the reconcile decision: see reconcile.rs.
