using System.Net;
using System.Net.Sockets;
using ThinFast.IO.Uring;

namespace ThinFast.Nbd;

/// <summary>
/// An NBD server (fixed newstyle, structured replies, base:allocation) serving
/// <see cref="ThinFast.IO.IBlockVolume"/>s, one export per volume, on any number of TCP and unix
/// listeners. All connections to an export share the volume, so multi-conn is advertised.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly Dictionary<string, NbdExport> _exports = new(StringComparer.Ordinal);
    private readonly List<NbdExport> _exportList;
    private readonly List<(Socket Socket, Task Loop, string? UnixPath)> _listeners = [];
    // Open connections and the tasks serving them; an entry leaves when its connection ends.
    private readonly Dictionary<NbdConnection, Task> _connections = [];
    // Clients refused for the connection limit that are being told so; under _connections' lock.
    private readonly Dictionary<Socket, Task> _refusals = [];
    private readonly Action<string>? _log;
    private readonly Timer _watchdog;
    private readonly IoUringReactor? _reactor;
    private readonly int _ringConnectionLimit;
    private int _ringConnections;
    private int _ringFullLogged;
    private readonly CancellationTokenSource _stop = new();
    private readonly DescriptorReserve _descriptorReserve = new();
    private volatile bool _stopping;
    private Task? _stopped;

    /// <summary>Refused clients are answered at most this many at a time; beyond that (a flood)
    /// they are just closed.</summary>
    private const int MaxRefusalsInProgress = 16;

    private static readonly TimeSpan FirstAcceptRetry = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan LastAcceptRetry = TimeSpan.FromSeconds(1);

    public NbdServer(IEnumerable<NbdExport> exports, NbdServerOptions? options = null, Action<string>? log = null)
    {
        Options = options ?? new NbdServerOptions();
        Options.Validate();
        _exportList = [.. exports];
        if (_exportList.Count == 0)
            throw new ArgumentException("at least one export is needed", nameof(exports));
        foreach (var export in _exportList)
        {
            if (!_exports.TryAdd(export.Name, export))
                throw new ArgumentException($"two exports are named '{export.Name}'", nameof(exports));
        }
        if (Options.DefaultExport is { } name && !_exports.ContainsKey(name))
            throw new ArgumentException($"default export '{name}' is not one of the exports", nameof(options));
        _log = log;
        _reactor = ChooseReactor(Options, out string transport);
        TransportDescription = transport;
        // A connection on the ring keeps up to two operations parked there (its reader's RECV and
        // its sender's SEND) for as long as its client makes it wait, which for an idle client is
        // forever. The ring has SqEntries - 1 slots, shared with the disks' I/O, and operations
        // beyond them queue until one completes: enough idle clients would stop every other
        // client and the disks. So connections may fill half the slots; later ones use .NET
        // sockets, whose waits park nothing in the ring.
        _ringConnectionLimit = _reactor is null ? 0 : Math.Max(1, (int)(_reactor.SqEntries - 1) / 4);
        Buffers = new PayloadBufferPool(Options.BufferTiers);
        var period = TimeSpan.FromMilliseconds(Math.Clamp(Options.ShortestTimeout.TotalMilliseconds / 4, 50, 1000));
        _watchdog = new Timer(static state => ((NbdServer)state!).CheckTimeouts(), this, period, period);
    }

    private IoUringReactor? ChooseReactor(NbdServerOptions options, out string description)
    {
        // A TLS connection's bytes go through SslStream, which needs a Stream and runs its own
        // async state machines and crypto: they stay off the reactor thread (docs/nbd.md, "TLS").
        if (options.Tls is { } tls)
        {
            description = $".NET sockets with TLS required (x509 from {tls.Folder}, " +
                (tls.VerifyPeer ? "client certificates verified against " + NbdTlsCredentials.CaFile : "no client certificates asked for") + ")";
            return null;
        }
        if (options.Transport == NbdTransportMode.Sockets)
        {
            description = ".NET sockets (chosen)";
            return null;
        }
        if (options.Reactor is { } given)
        {
            description = "io_uring (the given reactor)";
            return given;
        }
        if (IoUringReactor.TryGetShared(out var shared, out string? error))
        {
            description = "io_uring (the shared reactor)";
            return shared;
        }
        if (options.Transport == NbdTransportMode.IoUring)
            throw new NotSupportedException("NBD over io_uring was asked for but io_uring is unavailable: " + error);
        description = ".NET sockets (io_uring unavailable: " + error + ")";
        Log("nbd: serving with " + description);
        return null;
    }

    /// <summary>Which I/O path connections take, and why.</summary>
    public string TransportDescription { get; }

    /// <summary>Connections served through the io_uring ring at most; later ones use .NET
    /// sockets (0 without a reactor).</summary>
    public int RingConnectionLimit => _ringConnectionLimit;

    internal NbdTransport CreateTransport(Socket socket)
    {
        if (_reactor is not null)
        {
            if (Interlocked.Increment(ref _ringConnections) <= _ringConnectionLimit)
            {
                try
                {
                    return new UringTransport(new IoUringSocket(socket.SafeHandle, _reactor, "nbd client"));
                }
                catch
                {
                    Interlocked.Decrement(ref _ringConnections);
                    throw;
                }
            }
            Interlocked.Decrement(ref _ringConnections);
            if (Interlocked.Exchange(ref _ringFullLogged, 1) == 0)
                Log($"nbd: the io_uring ring's share of connections ({_ringConnectionLimit}) is taken; further connections use .NET sockets until some close");
        }
        return new SocketTransport(socket);
    }

    /// <summary>A connection's transport is done: its share of the ring is free again.</summary>
    internal void TransportClosed(NbdTransport transport)
    {
        if (transport is UringTransport)
            Interlocked.Decrement(ref _ringConnections);
    }

    private void CheckTimeouts()
    {
        long now = Environment.TickCount64;
        lock (_connections)
        {
            foreach (var connection in _connections.Keys)
                connection.CheckTimeouts(now);
        }
    }

    public NbdServerOptions Options { get; }

    public IReadOnlyList<NbdExport> Exports => _exportList;

    internal PayloadBufferPool Buffers { get; }

    internal bool IsStopping => _stopping;

    /// <summary>Connections currently open (handshake or transmission).</summary>
    public int ConnectionCount
    {
        get
        {
            lock (_connections)
                return _connections.Count;
        }
    }

    /// <summary>Listens on TCP (default 127.0.0.1, port 0 = any free port) and returns the bound
    /// endpoint.</summary>
    public IPEndPoint ListenTcp(IPEndPoint? endpoint = null)
    {
        endpoint ??= new IPEndPoint(IPAddress.Loopback, 0);
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endpoint);
            socket.Listen(128);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        StartAccepting(socket, null);
        return (IPEndPoint)socket.LocalEndPoint!;
    }

    /// <summary>Listens on a unix stream socket at <paramref name="path"/> (removed on stop).</summary>
    public void ListenUnix(string path)
    {
        if (File.Exists(path))
            throw new IOException($"{path} already exists; remove the stale socket first");
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(path));
            // Owner only, whatever the umask, and before anyone can connect: the socket reads and
            // writes every exported volume.
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            socket.Listen(128);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        StartAccepting(socket, path);
    }

    private void StartAccepting(Socket listener, string? unixPath)
    {
        lock (_connections)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            _listeners.Add((listener, AcceptLoopAsync(listener), unixPath));
        }
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        var retry = TimeSpan.Zero;
        long failures = 0;

        // Out of descriptors: the reserve goes to the runtime, and the next attempt waits longer.
        async Task<bool> BackOffAsync()
        {
            _descriptorReserve.Release();
            try
            {
                await Task.Delay(retry, _stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return false;
            }
            retry = TimeSpan.FromTicks(Math.Min(retry.Ticks * 2, LastAcceptRetry.Ticks));
            return true;
        }

        while (!_stopping)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync().ConfigureAwait(false);
            }
            catch (SocketException e) when (!_stopping && e.SocketErrorCode is SocketError.TooManyOpenSockets or SocketError.NoBufferSpaceAvailable)
            {
                // Out of file descriptors (EMFILE, ENFILE) or memory: the pending client stays in
                // the backlog, so retrying at once would fail again at once, in a loop that logs as
                // fast as it spins. Wait instead, longer each time, and say so once.
                failures++;
                if (retry == TimeSpan.Zero)
                {
                    retry = FirstAcceptRetry;
                    Log($"nbd: accept failed: {e.Message}; retrying after {FirstAcceptRetry.TotalMilliseconds} ms, backing off to {LastAcceptRetry.TotalSeconds} s, until it works");
                }
                if (!await BackOffAsync())
                    return;
                continue;
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (_stopping)
                    return;
                Log($"nbd: accept failed: {e.Message}");
                continue;
            }
            if (retry != TimeSpan.Zero)
            {
                // Still short of descriptors (the reserve cannot be taken back): this client
                // would take the runtime's last ones. Shed it and keep backing off.
                if (!_descriptorReserve.TryRestore())
                {
                    client.Dispose();
                    failures++;
                    if (!await BackOffAsync())
                        return;
                    continue;
                }
                Log($"nbd: accepting again after {failures} failed attempts");
                retry = TimeSpan.Zero;
                failures = 0;
            }
            if (client.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
                client.NoDelay = true;
            lock (_connections)
            {
                if (_stopping)
                {
                    client.Dispose();
                    continue;
                }
                if (_connections.Count >= Options.MaxConnections)
                {
                    Refuse(client);
                    continue;
                }
                // The task cannot finish before it is recorded: its finally block takes this lock.
                var connection = new NbdConnection(this, client);
                _connections[connection] = RunConnectionAsync(connection);
            }
        }
    }

    // Under _connections' lock.
    private void Refuse(Socket client)
    {
        if (_refusals.Count >= MaxRefusalsInProgress)
        {
            Log($"nbd: refusing a connection: {Options.MaxConnections} already open and {MaxRefusalsInProgress} refusals in progress; closing it");
            client.Dispose();
            return;
        }
        Log($"nbd: refusing a connection: {Options.MaxConnections} already open; telling the client");
        _refusals[client] = RefuseAsync(client);
    }

    private async Task RefuseAsync(Socket client)
    {
        await Task.Yield();
        try
        {
            await ConnectionRefusal.RunAsync(client, $"server is at its connection limit ({Options.MaxConnections} connections); try again later",
                Options.HandshakeTimeout).ConfigureAwait(false);
        }
        finally
        {
            lock (_connections)
                _refusals.Remove(client);
        }
    }

    private async Task RunConnectionAsync(NbdConnection connection)
    {
        await Task.Yield();
        try
        {
            await connection.RunAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Log($"nbd: connection failed: {e}");
        }
        finally
        {
            lock (_connections)
                _connections.Remove(connection);
        }
    }

    internal NbdExport? FindExport(string name)
    {
        if (name.Length == 0)
            name = Options.DefaultExport ?? (_exportList.Count == 1 ? _exportList[0].Name : "");
        return _exports.GetValueOrDefault(name);
    }

    internal void Log(string? message)
    {
        if (message is not null)
            _log?.Invoke(message);
    }

    /// <summary>Stops accepting, lets in-flight requests finish and reply (for at most
    /// <see cref="NbdServerOptions.StopTimeout"/>; clients not taking their replies by then are
    /// dropped), closes every connection, then flushes every export.</summary>
    public Task StopAsync()
    {
        lock (_connections)
        {
            if (_stopped is null)
            {
                _stopping = true;
                _stop.Cancel();
                _stopped = StopCoreAsync();
            }
            return _stopped;
        }
    }

    private async Task StopCoreAsync()
    {
        (Socket Socket, Task Loop, string? UnixPath)[] listeners;
        lock (_connections)
            listeners = [.. _listeners];
        foreach (var l in listeners)
            l.Socket.Dispose();
        await Task.WhenAll(listeners.Select(l => l.Loop)).ConfigureAwait(false);
        foreach (var l in listeners)
        {
            if (l.UnixPath is not null)
                File.Delete(l.UnixPath);
        }

        NbdConnection[] connections;
        Task[] tasks;
        (Socket Socket, Task Task)[] refusals;
        lock (_connections)
        {
            connections = [.. _connections.Keys];
            tasks = [.. _connections.Values];
            refusals = [.. _refusals.Select(r => (r.Key, r.Value))];
        }
        foreach (var c in connections)
            c.BeginShutdown();
        foreach (var r in refusals)
            r.Socket.Dispose();
        var ended = Task.WhenAll([.. tasks, .. refusals.Select(r => r.Task)]);
        while (await Task.WhenAny(ended, Task.Delay(Options.StopTimeout)).ConfigureAwait(false) != ended)
        {
            // A client that stopped reading would hold its connection, and the stop, until the send
            // timeout: its remaining replies are dropped instead. Requests still running in the
            // pool (a slow device) are waited for: their writes must finish before the flush below.
            for (int i = 0; i < connections.Length; i++)
            {
                if (!tasks[i].IsCompleted && connections[i].IsSending)
                {
                    Log($"nbd: stopping: dropping a client that has not taken its replies within {Options.StopTimeout.TotalSeconds:0.#} s");
                    connections[i].MarkBroken();
                }
            }
        }

        foreach (var volume in _exportList.Select(e => e.Volume).Distinct())
        {
            if (!volume.IsReadOnly)
                await volume.FlushAsync().ConfigureAwait(false);
        }
        await _watchdog.DisposeAsync().ConfigureAwait(false);
        _stop.Dispose();
        _descriptorReserve.Dispose();
        Buffers.Dispose();
    }

    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);
}
