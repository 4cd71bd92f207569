namespace ThinFast.Metadata;

/// <summary>Receives leaf entries in key order; returning false stops the walk.</summary>
internal interface IEntryVisitor
{
    bool Visit(ulong key, ReadOnlySpan<byte> value);
}

/// <summary>
/// persistent-data B-tree operations. Every change goes through <see cref="TransactionManager.Shadow"/>
/// from the root down, so the committed tree is never touched. Insert splits full nodes in half;
/// remove merges or redistributes with a sibling so every non-root node keeps at least max/3 entries.
/// Values are raw bytes; the reference-count meaning of leaf values is given by the tree kind.
/// </summary>
internal static class BTree
{
    public static int LeafValueSize(MetadataTree tree) => tree switch
    {
        MetadataTree.MappingTop or MetadataTree.MappingBottom => 8,
        MetadataTree.DeviceDetails => DeviceDetails.Size,
        MetadataTree.DataSpaceMapIndex => IndexEntry.Size,
        _ => 4,
    };

    public static ulong CreateEmpty(TransactionManager tm, MetadataTree tree)
    {
        tm.NewNode(leaf: true, LeafValueSize(tree), out ulong b);
        return b;
    }

    /// <summary>Finds <paramref name="key"/>; on success the value bytes are valid until the next mutation.</summary>
    public static bool TryFind(TransactionManager tm, ulong root, MetadataTree tree, ulong key, out ReadOnlySpan<byte> value)
    {
        ulong b = root;
        for (int depth = 0; depth <= MetadataFormat.MaxTreeDepth; depth++)
        {
            ReadOnlySpan<byte> n = tm.Read(b, tree);
            int i = Node.LowerBound(n, key);
            if (Node.IsLeaf(n))
            {
                bool found = i >= 0 && Node.Key(n, i) == key;
                value = found ? Node.Value(n, i) : default;
                return found;
            }
            if (i < 0)
            {
                value = default;
                return false;
            }
            b = Node.Value64(n, i);
        }
        throw TooDeep(b, tree);
    }

    public static bool TryFind64(TransactionManager tm, ulong root, MetadataTree tree, ulong key, out ulong value)
    {
        ulong b = root;
        for (int depth = 0; depth <= MetadataFormat.MaxTreeDepth; depth++)
        {
            ReadOnlySpan<byte> n = tm.Read(b, tree);
            int i = Node.LowerBound(n, key);
            if (Node.IsLeaf(n))
            {
                bool found = i >= 0 && Node.Key(n, i) == key;
                value = found ? Node.Value64(n, i) : 0;
                return found;
            }
            if (i < 0)
            {
                value = 0;
                return false;
            }
            b = Node.Value64(n, i);
        }
        throw TooDeep(b, tree);
    }

    public static ulong Insert(TransactionManager tm, ulong root, MetadataTree tree, ulong key, ReadOnlySpan<byte> value,
        Span<byte> oldValue, out bool existed)
    {
        ulong newRoot = InsertRec(tm, root, tree, key, value, oldValue, out existed, 0, out bool split, out ulong splitKey, out ulong splitBlock);
        if (split)
        {
            ulong firstKey = Node.Key(tm.Writable(newRoot), 0);
            Span<byte> r = tm.NewNode(leaf: false, 8, out ulong rb);
            Span<byte> v = stackalloc byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(v, newRoot);
            Node.InsertAt(r, 0, firstKey, v);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(v, splitBlock);
            Node.InsertAt(r, 1, splitKey, v);
            newRoot = rb;
        }
        return newRoot;
    }

    public static ulong Insert64(TransactionManager tm, ulong root, MetadataTree tree, ulong key, ulong value, out bool existed, out ulong oldValue)
    {
        Span<byte> v = stackalloc byte[8];
        Span<byte> old = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(v, value);
        ulong r = Insert(tm, root, tree, key, v, old, out existed);
        oldValue = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(old);
        return r;
    }

    private static ulong InsertRec(TransactionManager tm, ulong b, MetadataTree tree, ulong key, ReadOnlySpan<byte> value,
        Span<byte> oldValue, out bool existed, int depth, out bool split, out ulong splitKey, out ulong splitBlock)
    {
        if (depth > MetadataFormat.MaxTreeDepth)
            throw TooDeep(b, tree);
        ulong nb = tm.Shadow(b, tree);
        Span<byte> n = tm.Writable(nb);
        if (Node.IsLeaf(n))
        {
            int i = Node.LowerBound(n, key);
            if (i >= 0 && Node.Key(n, i) == key)
            {
                existed = true;
                Node.Value(n, i).CopyTo(oldValue);
                value.CopyTo(Node.Value(n, i));
                split = false;
                splitKey = splitBlock = 0;
                return nb;
            }
            existed = false;
            AddEntry(tm, n, i + 1, key, value, out split, out splitKey, out splitBlock);
            return nb;
        }
        int ci = Node.LowerBound(n, key);
        if (ci < 0)
        {
            ci = 0;
            Node.SetKey(n, 0, key);
        }
        ulong child = Node.Value64(n, ci);
        ulong newChild = InsertRec(tm, child, tree, key, value, oldValue, out existed, depth + 1, out bool childSplit, out ulong childKey, out ulong childBlock);
        if (newChild != child)
            Node.SetValue64(n, ci, newChild);
        if (childSplit)
        {
            Span<byte> v = stackalloc byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(v, childBlock);
            AddEntry(tm, n, ci + 1, childKey, v, out split, out splitKey, out splitBlock);
        }
        else
        {
            split = false;
            splitKey = splitBlock = 0;
        }
        return nb;
    }

    private static void AddEntry(TransactionManager tm, Span<byte> n, int index, ulong key, ReadOnlySpan<byte> value,
        out bool split, out ulong splitKey, out ulong splitBlock)
    {
        int nr = Node.NrEntries(n);
        if (nr < Node.MaxEntries(n))
        {
            Node.InsertAt(n, index, key, value);
            split = false;
            splitKey = splitBlock = 0;
            return;
        }
        Span<byte> right = tm.NewNode(Node.IsLeaf(n), Node.ValueSize(n), out ulong rb);
        int half = nr / 2;
        Node.MoveTail(n, half, right);
        if (index <= half)
            Node.InsertAt(n, index, key, value);
        else
            Node.InsertAt(right, index - half, key, value);
        split = true;
        splitKey = Node.Key(right, 0);
        splitBlock = rb;
    }

    public static ulong Remove(TransactionManager tm, ulong root, MetadataTree tree, ulong key, Span<byte> oldValue, out bool removed)
    {
        if (!TryFind(tm, root, tree, key, out _))
        {
            removed = false;
            return root;
        }
        removed = true;
        ulong newRoot = RemoveRec(tm, root, tree, key, oldValue, 0);
        while (true)
        {
            ReadOnlySpan<byte> n = tm.Read(newRoot, tree);
            if (Node.IsLeaf(n) || Node.NrEntries(n) != 1 || !tm.IsOwned(newRoot))
                break;
            ulong child = Node.Value64(n, 0);
            tm.Meta.Decrement(newRoot);
            newRoot = child;
        }
        return newRoot;
    }

    public static ulong Remove64(TransactionManager tm, ulong root, MetadataTree tree, ulong key, out bool removed, out ulong oldValue)
    {
        Span<byte> old = stackalloc byte[8];
        ulong r = Remove(tm, root, tree, key, old, out removed);
        oldValue = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(old);
        return r;
    }

    private static ulong RemoveRec(TransactionManager tm, ulong b, MetadataTree tree, ulong key, Span<byte> oldValue, int depth)
    {
        if (depth > MetadataFormat.MaxTreeDepth)
            throw TooDeep(b, tree);
        ulong nb = tm.Shadow(b, tree);
        Span<byte> n = tm.Writable(nb);
        int i = Node.LowerBound(n, key);
        if (Node.IsLeaf(n))
        {
            Node.Value(n, i).CopyTo(oldValue);
            Node.RemoveAt(n, i);
            return nb;
        }
        ulong child = Node.Value64(n, i);
        ulong newChild = RemoveRec(tm, child, tree, key, oldValue, depth + 1);
        Node.SetValue64(n, i, newChild);
        ReadOnlySpan<byte> c = tm.Writable(newChild);
        if (Node.NrEntries(c) < Node.MaxEntries(c) / 3 && Node.NrEntries(n) > 1)
            Rebalance(tm, n, i, tree);
        return nb;
    }

    private static void Rebalance(TransactionManager tm, Span<byte> parent, int childIndex, MetadataTree tree)
    {
        int li = childIndex > 0 ? childIndex - 1 : childIndex;
        int ri = li + 1;
        ulong lb = tm.Shadow(Node.Value64(parent, li), tree);
        Node.SetValue64(parent, li, lb);
        ulong rb = tm.Shadow(Node.Value64(parent, ri), tree);
        Node.SetValue64(parent, ri, rb);
        Span<byte> l = tm.Writable(lb), r = tm.Writable(rb);
        int nl = Node.NrEntries(l), nr = Node.NrEntries(r);
        if (nl + nr <= Node.MaxEntries(l))
        {
            Node.MoveHead(r, nr, l);
            Node.RemoveAt(parent, ri);
            tm.Meta.Decrement(rb);
            return;
        }
        int target = (nl + nr) / 2;
        if (nl > target)
            Node.MoveTailToFront(l, nl - target, r);
        else if (nl < target)
            Node.MoveHead(r, target - nl, l);
        Node.SetKey(parent, ri, Node.Key(r, 0));
    }

    /// <summary>Visits entries with lo &lt;= key &lt; hi in order. Returns false if the visitor or the range stopped it.</summary>
    public static bool Walk<TVisitor>(TransactionManager tm, ulong root, MetadataTree tree, ulong lo, ulong hi, ref TVisitor visitor, int depth = 0)
        where TVisitor : IEntryVisitor, allows ref struct
    {
        if (depth > MetadataFormat.MaxTreeDepth)
            throw TooDeep(root, tree);
        ReadOnlySpan<byte> n = tm.Read(root, tree);
        int nr = Node.NrEntries(n);
        int start = Math.Max(Node.LowerBound(n, lo), 0);
        if (Node.IsLeaf(n))
        {
            for (int i = start; i < nr; i++)
            {
                ulong k = Node.Key(n, i);
                if (k < lo)
                    continue;
                if (k >= hi || !visitor.Visit(k, Node.Value(n, i)))
                    return false;
            }
            return true;
        }
        int end = start;
        while (end < nr && Node.Key(n, end) < hi)
            end++;
        tm.Cache.PrefetchChildren(n, start, end);
        for (int i = start; i < end; i++)
        {
            if (!Walk(tm, Node.Value64(n, i), tree, lo, hi, ref visitor, depth + 1))
                return false;
        }
        return end == nr;
    }

    /// <summary>Drops one reference to the subtree at <paramref name="b"/>, releasing what only it held.</summary>
    public static void DeleteSubtree(TransactionManager tm, ulong b, MetadataTree tree, int depth = 0)
    {
        if (depth > MetadataFormat.MaxTreeDepth)
            throw TooDeep(b, tree);
        ReadOnlySpan<byte> n = tm.Read(b, tree);
        if (tm.Meta[b] > 1)
        {
            tm.Meta.Decrement(b);
            return;
        }
        int nr = Node.NrEntries(n);
        if (!Node.IsLeaf(n))
        {
            for (int i = 0; i < nr; i++)
                DeleteSubtree(tm, Node.Value64(n, i), tree, depth + 1);
        }
        else if (tree == MetadataTree.MappingTop)
        {
            for (int i = 0; i < nr; i++)
                DeleteSubtree(tm, Node.Value64(n, i), MetadataTree.MappingBottom);
        }
        else if (tree == MetadataTree.MappingBottom)
        {
            for (int i = 0; i < nr; i++)
                tm.Data.Decrement(tm.CheckedDataBlock(b, Node.Value64(n, i)));
        }
        tm.Meta.Decrement(b);
    }

    /// <summary>
    /// Builds a fresh, unshared tree from sorted entries (space-map trees): leaves of near-equal size,
    /// then parent levels the same way, so every non-root node is at least a third full.
    /// </summary>
    public static ulong BulkBuild(TransactionManager tm, MetadataTree tree, ReadOnlySpan<ulong> keys, ReadOnlySpan<byte> values)
    {
        int vs = LeafValueSize(tree);
        if (keys.Length == 0)
            return CreateEmpty(tm, tree);
        var levelKeys = new List<ulong>();
        var levelBlocks = new List<ulong>();
        int max = MetadataFormat.MaxEntries(vs);
        int count = keys.Length, nodes = (count + max - 1) / max, at = 0;
        for (int k = 0; k < nodes; k++)
        {
            int size = count / nodes + (k < count % nodes ? 1 : 0);
            Span<byte> n = tm.NewNode(leaf: true, vs, out ulong b);
            for (int i = 0; i < size; i++)
                Node.InsertAt(n, i, keys[at + i], values.Slice((at + i) * vs, vs));
            levelKeys.Add(keys[at]);
            levelBlocks.Add(b);
            at += size;
        }
        Span<byte> v = stackalloc byte[8];
        int internalMax = MetadataFormat.MaxEntries(8);
        while (levelBlocks.Count > 1)
        {
            var nextKeys = new List<ulong>();
            var nextBlocks = new List<ulong>();
            count = levelBlocks.Count;
            nodes = (count + internalMax - 1) / internalMax;
            at = 0;
            for (int k = 0; k < nodes; k++)
            {
                int size = count / nodes + (k < count % nodes ? 1 : 0);
                Span<byte> n = tm.NewNode(leaf: false, 8, out ulong b);
                for (int i = 0; i < size; i++)
                {
                    System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(v, levelBlocks[at + i]);
                    Node.InsertAt(n, i, levelKeys[at + i], v);
                }
                nextKeys.Add(levelKeys[at]);
                nextBlocks.Add(b);
                at += size;
            }
            levelKeys = nextKeys;
            levelBlocks = nextBlocks;
        }
        return levelBlocks[0];
    }

    private static MetadataCorruptException TooDeep(ulong b, MetadataTree tree) =>
        new(b, MetadataBlockKind.BTreeNode, tree, MetadataFault.TreeTooDeep,
            $"more than {MetadataFormat.MaxTreeDepth} levels below this node: a pointer cycle or a corrupt tree");
}
