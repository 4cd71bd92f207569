namespace ThinFast.Engine;

/// <summary>A pool-level operation was refused (bad argument, name taken, origin changed, ...).
/// The message is one line meant for the operator.</summary>
public sealed class PoolException : Exception
{
    public PoolException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }
}
