using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using ThinFast.Nbd;

namespace ThinFast.Fuzz.Nbd;

/// <summary>
/// One real <see cref="NbdServer"/> per process, on 127.0.0.1, serving a writable export "disk"
/// and a read-only export "ro" (both <see cref="ContractVolume"/>s), with .NET sockets as the
/// transport (the parsing is the same on io_uring; sockets keep the runs repeatable). Each input
/// is one client connection: its bytes are sent as the client's whole stream while the replies
/// are read and thrown away, then the server must close the connection by itself. Protocol
/// errors end the connection with a "dropping client" log line, which is the documented
/// outcome; a server-side exception (logged as a failed connection or a failed request), a
/// contract breach reaching a volume, or a connection the server does not finish is a crash.
/// </summary>
internal sealed class NbdRig
{
    public const long VolumeSize = 1 << 20;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);
    private const long AllocationLimit = 256L << 20;

    private readonly NbdServer _server;
    private readonly IPEndPoint _endpoint;
    private readonly ContractVolume _disk = new("disk", VolumeSize, readOnly: false);
    private readonly ContractVolume _readOnly = new("ro", VolumeSize, readOnly: true);
    private readonly List<string> _failures = [];

    private NbdRig()
    {
        var options = new NbdServerOptions
        {
            Transport = NbdTransportMode.Sockets,
            DefaultExport = "disk",
            // The volumes are 1 MiB, so no larger payload could be served; small tiers to match.
            MaxPayload = (int)VolumeSize,
            BufferTiers = [(128 * 1024, 16), ((int)VolumeSize, 4)],
        };
        _server = new NbdServer([new NbdExport(_disk, "disk", description: "fuzz disk"), new NbdExport(_readOnly, "ro", readOnly: true)],
            options, Record);
        _endpoint = _server.ListenTcp();
    }

    private static readonly Lazy<NbdRig> Shared = new(() => new NbdRig());

    public static NbdRig Instance => Shared.Value;

    private void Record(string message)
    {
        // "dropping client: ..." is the documented answer to a protocol error; these two are the
        // server's own code failing (the request one: the volume here never fails).
        if (message.StartsWith("nbd: connection failed:", StringComparison.Ordinal) || message.Contains(" failed: ", StringComparison.Ordinal))
        {
            lock (_failures)
                _failures.Add(message);
        }
    }

    /// <summary>Runs one client connection that sends <paramref name="stream"/> and reads until the server closes.</summary>
    public void Converse(ReadOnlySpan<byte> stream)
    {
        var budget = AllocationBudget.Start(AllocationLimit);
        using (var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            client.NoDelay = true;
            client.Connect(_endpoint);
            // Replies are drained concurrently, or a client stream of many READs would have both
            // sides blocked in send.
            var drain = Task.Run(() => Drain(client));
            try
            {
                int sent = 0;
                while (sent < stream.Length)
                    sent += client.Send(stream[sent..]);
                client.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException)
            {
                // The server hung up first (a protocol error): the rest of the stream is moot.
            }
            if (!drain.Wait(Patience))
                throw new UndocumentedFailureException($"the server neither closed the connection nor stopped replying within {Patience}");
        }
        var watch = Stopwatch.StartNew();
        while (_server.ConnectionCount > 0)
        {
            if (watch.Elapsed > Patience)
                throw new UndocumentedFailureException($"the server's connection did not finish within {Patience} of the client closing");
            Thread.Sleep(0);
        }
        string? failure;
        lock (_failures)
        {
            failure = _failures.Count > 0 ? string.Join("\n", _failures) : null;
            _failures.Clear();
        }
        failure ??= _disk.TakeViolation() ?? _readOnly.TakeViolation();
        if (failure is not null)
            throw new UndocumentedFailureException(failure);
        budget.Check("serving the connection");
    }

    private static void Drain(Socket client)
    {
        byte[] buffer = new byte[64 * 1024];
        try
        {
            while (client.Receive(buffer) > 0)
            {
            }
        }
        catch (SocketException)
        {
            // A reset after a protocol error ends the conversation as well as a close does.
        }
    }
}
