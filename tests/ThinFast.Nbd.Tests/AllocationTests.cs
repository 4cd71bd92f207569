using System.Buffers.Binary;
using System.Net.Sockets;

namespace ThinFast.Nbd.Tests;

// Runs alone: GC.GetTotalAllocatedBytes counts the whole process, so no other test may run meanwhile.
[CollectionDefinition(nameof(AllocationCollection), DisableParallelization = true)]
public sealed class AllocationCollection;

/// <summary>
/// The steady-state data path allocates nothing: a pipelined client (queue depth 8, READ, WRITE,
/// FLUSH, BLOCK_STATUS with structured replies) runs many requests through one connection and the
/// process-wide allocated byte count must not grow with the number of requests. The client is
/// synchronous over a blocking socket with preallocated buffers, so it allocates nothing itself.
/// </summary>
[Collection(nameof(AllocationCollection))]
public class AllocationTests(ITestOutputHelper output)
{
    private const int QueueDepth = 8;
    private const int IoSize = 4096;

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task RequestsAllocateNothingInSteadyState(NbdTransportMode transport)
    {
        await using var h = ServerHarness.Start(size: 16L * 1024 * 1024, options: ServerHarness.Using(transport));
        // Allocate every unit first so the volume itself does not allocate during the run.
        await h.Volume.WriteAsync(0, new byte[16 * 1024 * 1024]);

        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(h.SocketPath));
        var client = new PipelinedClient(socket);
        client.Handshake();

        double perRequest = 0;
        var thread = new Thread(() =>
        {
            client.Run(20_000);          // warm-up: pools, JIT tiers, socket engine
            client.Run(20_000);
            long before = GC.GetTotalAllocatedBytes(precise: true);
            const int measured = 100_000;
            client.Run(measured);
            long after = GC.GetTotalAllocatedBytes(precise: true);
            perRequest = (after - before) / (double)measured;
        });
        thread.Start();
        Assert.True(thread.Join(TimeSpan.FromSeconds(90)), "the pipelined client did not finish");
        output.WriteLine($"allocated bytes per request (process-wide, 100000 requests, QD {QueueDepth}): {perRequest:F3}");
        Assert.True(client.Errors == 0, $"{client.Errors} requests failed");
        // Less than one byte per request: a single object allocated per request would be >= 24.
        Assert.True(perRequest < 1.0, $"{perRequest:F3} bytes allocated per request");
        client.Disconnect();
    }

    private sealed class PipelinedClient(Socket socket)
    {
        private readonly byte[] _header = new byte[28 + IoSize];
        private readonly byte[] _reply = new byte[64 * 1024];
        private ulong _next;
        public int Errors;

        public void Handshake()
        {
            Receive(18);
            BinaryPrimitives.WriteUInt32BigEndian(_header, 3);
            socket.Send(_header.AsSpan(0, 4));
            Option(8, []);
            byte[] setMeta = [0, 0, 0, 4, .. "disk"u8, 0, 0, 0, 1, 0, 0, 0, 15, .. "base:allocation"u8];
            Option(10, setMeta);
            byte[] go = [0, 0, 0, 4, .. "disk"u8, 0, 0];
            Option(7, go);
        }

        private void Option(uint option, ReadOnlySpan<byte> data)
        {
            BinaryPrimitives.WriteUInt64BigEndian(_header, 0x49484156454F5054);
            BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(8), option);
            BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(12), (uint)data.Length);
            data.CopyTo(_header.AsSpan(16));
            socket.Send(_header.AsSpan(0, 16 + data.Length));
            while (true)
            {
                Receive(20);
                uint type = BinaryPrimitives.ReadUInt32BigEndian(_reply.AsSpan(12));
                Receive(BinaryPrimitives.ReadInt32BigEndian(_reply.AsSpan(16)));
                if (type == 1)
                    return;
                if ((type & 0x80000000) != 0)
                    throw new InvalidOperationException($"option {option} refused: 0x{type:x}");
            }
        }

        public void Run(int requests)
        {
            for (int i = 0; i < QueueDepth; i++)
                SendNext();
            for (int done = 0; done < requests; done++)
            {
                ReceiveReply();
                if (done + QueueDepth < requests)
                    SendNext();
            }
        }

        private void SendNext()
        {
            ulong n = _next++;
            // Mostly reads and writes, now and then a flush and a block status.
            ushort command = (n % 64) switch { 0 => 3, 1 => 7, _ => (ushort)(n % 2) };
            uint length = command == 3 ? 0u : IoSize;
            ulong offset = command == 3 ? 0 : (n * 7919 % 4000) * IoSize;
            BinaryPrimitives.WriteUInt32BigEndian(_header, 0x25609513);
            BinaryPrimitives.WriteUInt16BigEndian(_header.AsSpan(4), 0);
            BinaryPrimitives.WriteUInt16BigEndian(_header.AsSpan(6), command);
            BinaryPrimitives.WriteUInt64BigEndian(_header.AsSpan(8), n);
            BinaryPrimitives.WriteUInt64BigEndian(_header.AsSpan(16), offset);
            BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(24), length);
            socket.Send(_header.AsSpan(0, command == 1 ? 28 + IoSize : 28));
        }

        private void ReceiveReply()
        {
            Receive(4);
            uint magic = BinaryPrimitives.ReadUInt32BigEndian(_reply);
            if (magic == 0x67446698)
            {
                Receive(12);
                if (BinaryPrimitives.ReadUInt32BigEndian(_reply) != 0)
                    Errors++;
                return;
            }
            Receive(16);
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(_reply.AsSpan(2));
            int length = BinaryPrimitives.ReadInt32BigEndian(_reply.AsSpan(12));
            if ((type & 0x8000) != 0)
                Errors++;
            Receive(length);
        }

        public void Disconnect()
        {
            BinaryPrimitives.WriteUInt16BigEndian(_header.AsSpan(6), 2);
            BinaryPrimitives.WriteUInt64BigEndian(_header.AsSpan(16), 0);
            BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(24), 0);
            socket.Send(_header.AsSpan(0, 28));
        }

        private void Receive(int count)
        {
            for (int got = 0; got < count;)
            {
                int n = socket.Receive(_reply.AsSpan(got, count - got));
                if (n == 0)
                    throw new IOException("server closed the connection");
                got += n;
            }
        }
    }
}
