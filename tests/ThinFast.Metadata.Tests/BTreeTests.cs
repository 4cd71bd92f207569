using System.Buffers.Binary;
using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

/// <summary>The B-tree alone against SortedDictionary, with its structural invariants and block accounting checked.</summary>
public class BTreeTests
{
    private sealed class Harness
    {
        public readonly MemoryBlockDevice Device = new(64L << 20);
        public readonly TransactionManager Tm;

        public Harness()
        {
            var cache = new BlockCache(Device, 1 << 20) { NrBlocks = 16384 };
            var meta = new CountTable(16384);
            meta.Load(0, 1);
            Tm = new TransactionManager(cache, meta, new CountTable(1 << 20));
        }

        /// <summary>Writes this "transaction" so that the next one has to shadow everything it changes.</summary>
        public void Commit()
        {
            Tm.Cache.WriteDirty(b => Tm.Meta[b] != 0);
            Tm.EndTransaction();
        }
    }

    private struct Collect() : IEntryVisitor
    {
        public readonly List<(ulong, uint)> Entries = new();

        public bool Visit(ulong key, ReadOnlySpan<byte> value)
        {
            Entries.Add((key, BinaryPrimitives.ReadUInt32LittleEndian(value)));
            return true;
        }
    }

    /// <summary>Every leaf at one depth, non-root nodes at least a third full, keys ordered within and across nodes; returns the node count.</summary>
    private static int CheckShape(TransactionManager tm, ulong root, MetadataTree tree)
    {
        int leafDepth = -1, nodes = 0;
        ulong? lastKey = null;
        void Visit(ulong b, int depth, ulong? parentKey)
        {
            nodes++;
            Assert.Equal(1u, tm.Meta[b]);
            ReadOnlySpan<byte> n = tm.Read(b, tree);
            int nr = Node.NrEntries(n);
            if (depth > 0)
                Assert.True(nr >= Node.MaxEntries(n) / 3, $"node {b} at depth {depth} has {nr} of {Node.MaxEntries(n)} entries");
            if (parentKey.HasValue && nr > 0)
                Assert.True(parentKey.Value <= Node.Key(n, 0));
            if (Node.IsLeaf(n))
            {
                if (leafDepth < 0) leafDepth = depth;
                Assert.Equal(leafDepth, depth);
                for (int i = 0; i < nr; i++)
                {
                    Assert.True(lastKey == null || Node.Key(n, i) > lastKey);
                    lastKey = Node.Key(n, i);
                }
                return;
            }
            var keys = new List<(ulong Key, ulong Child)>();
            for (int i = 0; i < nr; i++)
                keys.Add((Node.Key(n, i), Node.Value64(n, i)));
            foreach (var (key, child) in keys)
                Visit(child, depth + 1, key);
        }
        Visit(root, 0, null);
        return nodes;
    }

    [Fact]
    public void RandomInsertsAndRemovesMatchSortedDictionaryAndKeepTheShape()
    {
        var h = new Harness();
        const MetadataTree tree = MetadataTree.DataRefCounts;
        ulong root = BTree.CreateEmpty(h.Tm, tree);
        var model = new SortedDictionary<ulong, uint>();
        var rng = new Random(8);
        Span<byte> v = stackalloc byte[4], old = stackalloc byte[4];
        int maxNodes = 0;
        for (int op = 0; op < 240_000; op++)
        {
            // Grow to ~60,000 keys (3 levels of 336/252-entry nodes), then shrink back to nothing.
            bool growing = op < 120_000;
            ulong key = (ulong)rng.Next(80_000);
            if (rng.Next(100) < (growing ? 75 : 15))
            {
                uint value = (uint)rng.Next();
                BinaryPrimitives.WriteUInt32LittleEndian(v, value);
                root = BTree.Insert(h.Tm, root, tree, key, v, old, out bool existed);
                Assert.Equal(model.ContainsKey(key), existed);
                if (existed)
                    Assert.Equal(model[key], BinaryPrimitives.ReadUInt32LittleEndian(old));
                model[key] = value;
            }
            else
            {
                root = BTree.Remove(h.Tm, root, tree, key, old, out bool removed);
                Assert.Equal(model.Remove(key, out uint was), removed);
                if (removed)
                    Assert.Equal(was, BinaryPrimitives.ReadUInt32LittleEndian(old));
            }
            if (op % 5_000 == 4_999)
            {
                var all = new Collect();
                BTree.Walk(h.Tm, root, tree, 0, ulong.MaxValue, ref all);
                Assert.Equal(model.Select(kv => (kv.Key, kv.Value)).ToList(), all.Entries);
                int nodes = CheckShape(h.Tm, root, tree);
                maxNodes = Math.Max(maxNodes, nodes);
                Assert.Equal((ulong)nodes + 1, h.Tm.Meta.NrAllocated);
                ulong lo = (ulong)rng.Next(80_000), hi = lo + 500;
                var range = new Collect();
                BTree.Walk(h.Tm, root, tree, lo, hi, ref range);
                Assert.Equal(model.Where(kv => kv.Key >= lo && kv.Key < hi).Select(kv => (kv.Key, kv.Value)).ToList(), range.Entries);
                h.Commit();
            }
        }
        foreach (ulong key in model.Keys.ToList())
        {
            root = BTree.Remove(h.Tm, root, tree, key, old, out bool removed);
            Assert.True(removed);
        }
        Assert.True(maxNodes > 200, $"the tree only reached {maxNodes} nodes");
        Assert.Equal(1, CheckShape(h.Tm, root, tree));
        Assert.Equal(2ul, h.Tm.Meta.NrAllocated);
    }

    [Fact]
    public void ChangingASharedTreeLeavesTheOtherVersionIntact()
    {
        var h = new Harness();
        const MetadataTree tree = MetadataTree.MappingBottom;
        ulong a = BTree.CreateEmpty(h.Tm, tree);
        for (ulong k = 0; k < 20_000; k++)
        {
            h.Tm.Data.Increment(k);
            a = BTree.Insert64(h.Tm, a, tree, k, MetadataFormat.PackMapping(k, 0), out _, out _);
        }
        h.Commit();
        h.Tm.Meta.Increment(a);
        ulong b = a;
        for (ulong k = 0; k < 20_000; k += 100)
        {
            b = BTree.Remove64(h.Tm, b, tree, k, out bool removed, out ulong packed);
            Assert.True(removed);
            h.Tm.Data.Decrement(MetadataFormat.MappingBlock(packed));
        }
        Assert.NotEqual(a, b);
        for (ulong k = 0; k < 20_000; k++)
        {
            Assert.True(BTree.TryFind64(h.Tm, a, tree, k, out ulong va));
            Assert.Equal(k, MetadataFormat.MappingBlock(va));
            Assert.Equal(k % 100 != 0, BTree.TryFind64(h.Tm, b, tree, k, out _));
            // Every leaf (>= 126 consecutive keys) lost a key, so every leaf was copied: a block still
            // mapped by both versions is now held by two distinct leaves, a removed one by a's only.
            Assert.Equal(k % 100 == 0 ? 1u : 2u, h.Tm.Data[k]);
        }
        BTree.DeleteSubtree(h.Tm, a, tree);
        for (ulong k = 0; k < 20_000; k++)
            Assert.Equal(k % 100 == 0 ? 0u : 1u, h.Tm.Data[k]);
        BTree.DeleteSubtree(h.Tm, b, tree);
        Assert.Equal(1ul, h.Tm.Meta.NrAllocated);
        Assert.Equal(0ul, h.Tm.Data.NrAllocated);
    }
}
