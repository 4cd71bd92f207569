using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>
/// Random workloads against a plain byte-array model of every volume, with many requests in
/// flight. Requests in flight at the same time never overlap in bytes (the model could not say
/// which of two overlapping writes wins), but they do share blocks, so provisioning, block locks
/// and copy-on-write race for real.
/// </summary>
public class ModelBasedTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    private sealed class ModelVolume(string name, byte[] contents, byte[]? origin)
    {
        public string Name { get; } = name;
        public byte[] Contents { get; } = contents;
        public byte[]? Origin { get; } = origin;
        public List<(long Start, long End)> InFlight { get; } = new();
    }

    /// <summary>On the in-memory device every request completes before the next is issued, so
    /// this run is about breadth; on <see cref="OutOfOrderDevice"/> requests complete late, out of
    /// order and on other threads, so requests to the same blocks really wait for each other, and
    /// the test asserts that they did.</summary>
    [Theory]
    [InlineData(false, 50_000)]
    [InlineData(true, 20_000)]
    public async Task OperationsWith32InFlightMatchTheModel(bool outOfOrder, int operations)
    {
        const int inFlightTarget = 32, maxVolumes = 6;
        var random = new Random(20261125);
        OutOfOrderDevice? slowData = null;
        using var h = new PoolHarness(1024L * B, new PoolOptions { CommitInterval = TimeSpan.FromMilliseconds(200) },
            size => size == PoolHarness.MetadataSize || !outOfOrder
                ? new MemoryBlockDevice(size, name: size == PoolHarness.MetadataSize ? "metadata" : "data")
                : slowData = new OutOfOrderDevice(new MemoryBlockDevice(size, name: "data"), seed: 7, workers: 2, maxDelayMicroseconds: 200));
        using var buffers = new AlignedBufferPool(256 * 1024, 64);
        var origins = new[]
        {
            h.AddOrigin("short", PoolHarness.Pattern(B * 20 + 4096 + 512, 1)),  // shorter than the volumes, ends mid-block
            h.AddOrigin("long", PoolHarness.Pattern(B * 48, 2)),
        };
        var volumes = new List<ModelVolume>();
        int nextName = 0;
        var inFlight = new List<Task>();
        long mismatches = 0, completed = 0;

        ModelVolume Create()
        {
            string name = $"v{nextName++}";
            long size = B * random.Next(24, 40) + 512 * random.Next(0, 3);
            string? originPath = random.Next(3) == 0 ? null : origins[random.Next(origins.Length)];
            h.Pool.CreateVolume(name, size, originPath);
            var contents = new byte[size];
            byte[]? origin = originPath is null ? null : h.Origin(originPath);
            if (origin is not null)
                origin.AsSpan(0, (int)Math.Min(size, origin.Length)).CopyTo(contents);
            var mv = new ModelVolume(name, contents, origin);
            volumes.Add(mv);
            return mv;
        }

        async Task Drain()
        {
            await Task.WhenAll(inFlight);
            inFlight.Clear();
        }

        for (int i = 0; i < 3; i++)
            Create();

        for (int op = 0; op < operations; op++)
        {
            if (inFlight.Count >= inFlightTarget)
            {
                var done = await Task.WhenAny(inFlight);
                await done;
                inFlight.Remove(done);
            }
            int kind = random.Next(1000);
            if (kind < 12)
            {
                // Administrative operations see a quiet pool, as their model changes are immediate.
                await Drain();
                if (kind < 4 && volumes.Count < maxVolumes)
                {
                    Create();
                }
                else if (kind < 8 && volumes.Count < maxVolumes)
                {
                    var source = volumes[random.Next(volumes.Count)];
                    string name = $"v{nextName++}";
                    h.Pool.CreateSnapshot(source.Name, name);
                    volumes.Add(new ModelVolume(name, (byte[])source.Contents.Clone(), source.Origin));
                }
                else if (volumes.Count > 2)
                {
                    var victim = volumes[random.Next(volumes.Count)];
                    h.Pool.DeleteVolume(victim.Name);
                    volumes.Remove(victim);
                }
                continue;
            }

            var mv = volumes[random.Next(volumes.Count)];
            var volume = h.Pool.GetVolume(mv.Name);
            long size = mv.Contents.Length;
            // Mostly small requests, some spanning several blocks, some unaligned.
            long length = random.Next(10) switch
            {
                < 5 => 4096,
                < 7 => random.Next(1, 3 * B),
                < 9 => B,
                _ => random.Next(1, 9000),
            };
            length = Math.Min(length, size);
            long offset = random.Next(4) == 0 ? random.NextInt64(size - length + 1) : random.NextInt64((size - length) / 512 + 1) * 512;
            if (kind < 150)
            {
                inFlight.Add(Track(mv, 0, 0, volume.FlushAsync().AsTask()));
                continue;
            }
            lock (mv.InFlight)
            {
                if (mv.InFlight.Any(r => r.Start < offset + length && offset < r.End))
                    continue;
            }

            if (kind < 550)
            {
                var expected = mv.Contents.AsSpan((int)offset, (int)length).ToArray();
                inFlight.Add(Track(mv, offset, length, ReadAndCompare(volume, offset, expected)));
            }
            else if (kind < 900)
            {
                var data = PoolHarness.Pattern((int)length, op);
                data.CopyTo(mv.Contents, offset);
                var flags = random.Next(10) == 0 ? WriteFlags.ForceUnitAccess : WriteFlags.None;
                inFlight.Add(Track(mv, offset, length, WriteFrom(volume, offset, data, flags)));
            }
            else if (kind < 950)
            {
                for (long block = (offset + B - 1) / B; block < (offset + length) / B; block++)
                {
                    var target = mv.Contents.AsSpan((int)(block * B), B);
                    target.Clear();
                    if (mv.Origin is not null && block * B < mv.Origin.Length)
                        mv.Origin.AsSpan((int)(block * B), (int)Math.Min(B, mv.Origin.Length - block * B)).CopyTo(target);
                }
                inFlight.Add(Track(mv, offset, length, volume.DiscardAsync(offset, length).AsTask()));
            }
            else
            {
                mv.Contents.AsSpan((int)offset, (int)length).Clear();
                inFlight.Add(Track(mv, offset, length, volume.WriteZeroesAsync(offset, length, random.Next(2) == 0 ? ZeroFlags.MayDeallocate : ZeroFlags.None).AsTask()));
            }
        }
        await Drain();
        // Off the device's worker thread the last completion may have left us on: the checks
        // below wait synchronously on the device.
        await Task.Yield();

        async Task Track(ModelVolume owner, long start, long len, Task task)
        {
            var range = (start, start + len);
            if (len > 0)
            {
                lock (owner.InFlight)
                    owner.InFlight.Add(range);
            }
            try
            {
                await task;
                Interlocked.Increment(ref completed);
            }
            finally
            {
                if (len > 0)
                {
                    lock (owner.InFlight)
                        owner.InFlight.Remove(range);
                }
            }
        }

        async Task ReadAndCompare(ThinVolume v, long offset, byte[] expected)
        {
            if (expected.Length <= buffers.BufferSize && buffers.TryRent(out var buffer))
            {
                try
                {
                    await v.ReadAsync(offset, buffer.Memory[..expected.Length]);
                    if (!buffer.GetSpan()[..expected.Length].SequenceEqual(expected))
                        Interlocked.Increment(ref mismatches);
                }
                finally
                {
                    buffers.Return(buffer);
                }
                return;
            }
            var actual = new byte[expected.Length];
            await v.ReadAsync(offset, actual);
            if (!actual.AsSpan().SequenceEqual(expected))
                Interlocked.Increment(ref mismatches);
        }

        async Task WriteFrom(ThinVolume v, long offset, byte[] data, WriteFlags flags)
        {
            if (data.Length <= buffers.BufferSize && buffers.TryRent(out var buffer))
            {
                try
                {
                    data.CopyTo(buffer.GetSpan());
                    await v.WriteAsync(offset, buffer.Memory[..data.Length], flags);
                }
                finally
                {
                    buffers.Return(buffer);
                }
                return;
            }
            await v.WriteAsync(offset, data, flags);
        }

        Assert.Equal(0, mismatches);
        Assert.True(completed > operations / 2, $"only {completed} requests completed");
        long lockWaits = h.Pool.BlockLockWaits;
        TestContext.Current.SendDiagnosticMessage($"out of order: {outOfOrder}; block-lock waits: {lockWaits}" +
            (slowData is null ? "" : $"; device: {slowData.OutOfOrderCompletions} of {slowData.Completed} completions out of order, at most {slowData.MaxInFlight} in flight"));
        if (slowData is not null)
        {
            Assert.True(lockWaits > operations / 100, $"only {lockWaits} block-lock waits in {operations} operations: requests did not overlap");
            Assert.True(slowData.OutOfOrderCompletions > slowData.Completed / 10, $"{slowData.OutOfOrderCompletions} of {slowData.Completed} completions were out of order");
            Assert.True(slowData.MaxInFlight >= 8, $"at most {slowData.MaxInFlight} requests were in flight on the device");
        }

        void VerifyAll()
        {
            foreach (var mv in volumes)
            {
                var actual = new byte[mv.Contents.Length];
                h.Pool.GetVolume(mv.Name).ReadAsync(0, actual).AsTask().GetAwaiter().GetResult();
                Assert.True(actual.AsSpan().SequenceEqual(mv.Contents), $"volume {mv.Name} differs from the model");
            }
        }

        VerifyAll();
        h.AssertOriginsUnchanged();
        h.AssertMetadataClean();
        h.Reopen();
        VerifyAll();
        h.AssertMetadataClean();
    }
}
