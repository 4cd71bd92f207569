using ThinFast.IO;
using ThinFast.IO.Uring;

namespace ThinFast.Nbd;

/// <summary>One volume served under a name.</summary>
public sealed class NbdExport
{
    public NbdExport(IBlockVolume volume, string? name = null, bool readOnly = false, string? description = null)
    {
        ArgumentNullException.ThrowIfNull(volume);
        Volume = volume;
        Name = name ?? volume.Name;
        if (System.Text.Encoding.UTF8.GetByteCount(Name) > NbdProtocol.MaxStringLength)
            throw new ArgumentException($"export name is longer than {NbdProtocol.MaxStringLength} bytes", nameof(name));
        ReadOnly = readOnly || volume.IsReadOnly;
        Description = description;
    }

    public IBlockVolume Volume { get; }

    public string Name { get; }

    /// <summary>Writes, trims and zeroes are refused with EPERM (the volume's own read-only flag
    /// implies this).</summary>
    public bool ReadOnly { get; }

    public string? Description { get; }
}

/// <summary>Which I/O path an <see cref="NbdServer"/>'s connections take.</summary>
public enum NbdTransportMode
{
    /// <summary>io_uring when a reactor can be had, else .NET sockets (the reason is logged).</summary>
    Auto,
    /// <summary>io_uring or fail: receives and sends go through the reactor ring, and each
    /// request is parsed, served and answered on the reactor thread.</summary>
    IoUring,
    /// <summary>.NET sockets (epoll on Linux, IOCP on Windows); requests are served on the
    /// thread pool.</summary>
    Sockets,
}

/// <summary>Limits and buffer sizing of an <see cref="NbdServer"/>.</summary>
public sealed record NbdServerOptions
{
    /// <summary>Largest READ/WRITE payload accepted (advertised as the maximum block size).</summary>
    public int MaxPayload { get; init; } = 32 * 1024 * 1024;

    /// <summary>Minimum block size advertised: 1 because volumes accept any alignment.</summary>
    public int MinimumBlockSize { get; init; } = 1;

    /// <summary>Connections open at once (handshake or transmission). A client beyond this is
    /// answered every option with NBD_REP_ERR_SHUTDOWN and a message saying the server is at its
    /// connection limit, so it can tell the user why instead of seeing a bare close.</summary>
    /// <remarks>1024: a host serving many guests needs a connection or more for each, and what
    /// keeps one client from taking what others need is not this limit but the timeouts (a stalled
    /// handshake or request goes after 30 s) and the per-connection payload budget. An idle
    /// connection costs one descriptor and about 88 KiB resident (ConnectionFloodTests, 1,000
    /// connections); at the old default of 64 the 65th guest was refused.</remarks>
    public int MaxConnections { get; init; } = 1024;

    /// <summary>Requests served concurrently per connection; the reader stops reading new headers
    /// while all are busy (TCP backpressure).</summary>
    public int RequestsPerConnection { get; init; } = 16;

    /// <summary>Payload buffers made up front (size, count), shared by every connection. A request
    /// takes the smallest free one that fits; when its tier has none left it gets a buffer of its
    /// own size allocated for it instead of waiting for another connection to return one. The last
    /// tier must hold <see cref="MaxPayload"/>.</summary>
    public IReadOnlyList<(int Size, int Count)> BufferTiers { get; init; } =
        [(128 * 1024, 128), (2 * 1024 * 1024, 16), (32 * 1024 * 1024, 2)];

    /// <summary>Payload bytes one connection may hold at once: WRITE payloads being received or
    /// written and READ data being read or waiting to be sent. A request that would go over it
    /// waits until that connection's own earlier requests let go of theirs, so a client that
    /// stalls or stops reading holds at most this much (the server's memory for payloads is at
    /// most the tiers plus <see cref="MaxConnections"/> times this). At least
    /// <see cref="MaxPayload"/>.</summary>
    public long ConnectionBufferBytes { get; init; } = 64L * 1024 * 1024;

    /// <summary>An oversized WRITE's payload is read and thrown away up to this many bytes so the
    /// connection survives; beyond it the connection is dropped.</summary>
    public long MaxDrainBytes { get; init; } = 128L * 1024 * 1024;

    /// <summary>A client still negotiating after this long is dropped.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>A reply send that makes no progress for this long (the client stopped reading)
    /// drops the connection, freeing its buffers.</summary>
    public TimeSpan SendTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>A request whose header or WRITE payload has started arriving but is not complete
    /// after this long (the client stalled mid-request) drops the connection, freeing the payload
    /// buffer it holds.</summary>
    public TimeSpan ReceiveTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>A connection past the handshake with no request in flight and nothing received for
    /// this long is closed, so idle clients cannot hold the connection limit forever. Null (the
    /// default) keeps idle connections: an NBD client such as the kernel's may legitimately send
    /// nothing for hours while its device is unused.</summary>
    public TimeSpan? IdleTimeout { get; init; }

    /// <summary>How long a stop waits for connections to take the replies of their in-flight
    /// requests; those still sending after it (a client that stopped reading) are dropped, so a
    /// SIGTERM ends in seconds whatever the clients do.</summary>
    public TimeSpan StopTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Export served for the empty name; null means the empty name is unknown.</summary>
    public string? DefaultExport { get; init; }

    /// <summary>Answer NBD_OPT_LIST with the export names (else NBD_REP_ERR_POLICY).</summary>
    public bool AllowList { get; init; } = true;

    /// <summary>X.509 credentials; when set, TLS is required: a client must negotiate
    /// NBD_OPT_STARTTLS before any other option (as qemu-nbd with <c>--tls-creds</c> and nbdkit
    /// with <c>--tls=require</c>), and its connection runs on .NET sockets. Null: no TLS, and
    /// STARTTLS is refused with NBD_REP_ERR_POLICY.</summary>
    public NbdTlsCredentials? Tls { get; init; }

    /// <summary>How connections send and receive.</summary>
    public NbdTransportMode Transport { get; init; } = NbdTransportMode.Auto;

    /// <summary>The reactor io_uring connections use; null means the process-wide shared one,
    /// which is also what pool devices use unless given their own, so by default a request's
    /// network and disk I/O go through one ring on one thread.</summary>
    public IoUringReactor? Reactor { get; init; }

    /// <summary>The shortest timeout, which sets how often the server checks them.</summary>
    internal TimeSpan ShortestTimeout =>
        new[] { HandshakeTimeout, SendTimeout, ReceiveTimeout, IdleTimeout ?? TimeSpan.MaxValue }.Min();

    internal void Validate()
    {
        if (MaxPayload < 4096 || (MaxPayload & (MaxPayload - 1)) != 0)
            throw new ArgumentException($"MaxPayload {MaxPayload} must be a power of two of at least 4096");
        if (MinimumBlockSize is not (1 or 512 or 4096))
            throw new ArgumentException($"MinimumBlockSize {MinimumBlockSize} must be 1, 512 or 4096");
        if (MaxConnections < 1)
            throw new ArgumentException($"MaxConnections {MaxConnections} must be at least 1");
        if (RequestsPerConnection is < 1 or > 1024)
            throw new ArgumentException($"RequestsPerConnection {RequestsPerConnection} must be in 1..1024");
        if (HandshakeTimeout <= TimeSpan.Zero || SendTimeout <= TimeSpan.Zero || ReceiveTimeout <= TimeSpan.Zero || IdleTimeout <= TimeSpan.Zero || StopTimeout <= TimeSpan.Zero)
            throw new ArgumentException("HandshakeTimeout, SendTimeout, ReceiveTimeout, IdleTimeout and StopTimeout must be positive");
        if (ConnectionBufferBytes < MaxPayload)
            throw new ArgumentException($"ConnectionBufferBytes {ConnectionBufferBytes} is smaller than MaxPayload ({MaxPayload}): a largest request could never be served");
        if (Tls is not null && Transport == NbdTransportMode.IoUring)
            throw new ArgumentException("TLS connections run on .NET sockets: Transport IoUring cannot be combined with Tls");
        if (BufferTiers.Count == 0)
            throw new ArgumentException("BufferTiers is empty");
        int previous = 0;
        foreach (var (size, count) in BufferTiers)
        {
            if (size <= previous || count < 1 || size % NativeBuffer.PageSize != 0)
                throw new ArgumentException($"buffer tier ({size}, {count}) must be page-multiple sizes in increasing order with count >= 1");
            previous = size;
        }
        if (previous < MaxPayload)
            throw new ArgumentException($"the largest buffer tier ({previous}) is smaller than MaxPayload ({MaxPayload})");
    }
}
