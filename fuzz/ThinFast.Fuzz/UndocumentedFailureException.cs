namespace ThinFast.Fuzz;

/// <summary>
/// A misbehaviour the code under test did not throw itself but the harness saw: an allocation
/// far beyond what the input could need, a server-side exception the NBD server only logged, a
/// hang, a contract breach. Thrown so that it reaches afl-fuzz as a crash like any other.
/// </summary>
public sealed class UndocumentedFailureException(string message) : Exception(message);
