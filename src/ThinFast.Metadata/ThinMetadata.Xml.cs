using System.Globalization;
using System.Xml;
using ThinFast.IO;

namespace ThinFast.Metadata;

public sealed partial class ThinMetadata
{
    private ref struct XmlMappingWriter(TextWriter writer) : IEntryVisitor
    {
        private readonly TextWriter _writer = writer;
        private ulong _origin, _data, _length;
        private uint _time;

        public bool Visit(ulong key, ReadOnlySpan<byte> value)
        {
            ulong packed = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(value);
            ulong block = MetadataFormat.MappingBlock(packed);
            uint time = MetadataFormat.MappingTime(packed);
            if (_length > 0 && key == _origin + _length && block == _data + _length && time == _time)
            {
                _length++;
                return true;
            }
            Flush();
            _origin = key;
            _data = block;
            _time = time;
            _length = 1;
            return true;
        }

        public void Flush()
        {
            if (_length == 1)
                _writer.Write($"    <single_mapping origin_block=\"{_origin}\" data_block=\"{_data}\" time=\"{_time}\"/>\n");
            else if (_length > 1)
                _writer.Write($"    <range_mapping origin_begin=\"{_origin}\" data_begin=\"{_data}\" length=\"{_length}\" time=\"{_time}\"/>\n");
            _length = 0;
        }
    }

    /// <summary>
    /// The pool in thin_dump's XML, byte for byte (for the same committed state): devices in id
    /// order, mappings coalesced into ranges where block, data block and time all continue.
    /// </summary>
    public void WriteXml(TextWriter writer)
    {
        writer.Write(string.Create(CultureInfo.InvariantCulture,
            $"<superblock uuid=\"\" time=\"{_sb.Time}\" transaction=\"{_sb.TransactionId}\" flags=\"{_sb.Flags}\" version=\"{_sb.Version}\" data_block_size=\"{_sb.DataBlockSize}\" nr_data_blocks=\"{_tm.Data.NrBlocks}\">\n"));
        foreach (ulong id in _deviceIds)
        {
            DeviceState st = _devices[id];
            DeviceDetails d = st.Details;
            writer.Write(string.Create(CultureInfo.InvariantCulture,
                $"  <device dev_id=\"{id}\" mapped_blocks=\"{d.MappedBlocks}\" transaction=\"{d.TransactionId}\" creation_time=\"{d.CreationTime}\" snap_time=\"{d.SnapshottedTime}\">\n"));
            var mappings = new XmlMappingWriter(writer);
            BTree.Walk(_tm, st.Root, MetadataTree.MappingBottom, 0, ulong.MaxValue, ref mappings);
            mappings.Flush();
            writer.Write("  </device>\n");
        }
        writer.Write("</superblock>\n");
    }

    /// <summary>
    /// Formats <paramref name="metadata"/> and fills it from thin_dump XML, like thin_restore:
    /// every device gets its own tree, mapped_blocks is recounted, a missing version means 1.
    /// </summary>
    public static ThinMetadata RestoreXml(TextReader xml, IBlockDevice metadata)
    {
        using var reader = XmlReader.Create(xml, new XmlReaderSettings { IgnoreWhitespace = true, IgnoreComments = true });
        ThinMetadata? md = null;
        try
        {
            DeviceState? device = null;
            ulong deviceId = 0;
            while (reader.Read())
            {
                if (reader.NodeType == XmlNodeType.EndElement)
                {
                    if (reader.Name == "device")
                        device = null;
                    continue;
                }
                if (reader.NodeType != XmlNodeType.Element)
                    continue;
                switch (reader.Name)
                {
                    case "superblock":
                        if (md != null)
                            throw Fail(reader, "a second <superblock>");
                        md = Format(metadata, Num32(reader, "data_block_size"), Num(reader, "nr_data_blocks"));
                        md._sb.Time = Num32(reader, "time");
                        if (md._sb.Time >= MetadataFormat.MaxTime)
                            throw Fail(reader, $"time {md._sb.Time} does not fit in 24 bits");
                        md._sb.TransactionId = Num(reader, "transaction");
                        md._sb.Flags = OptionalNum32(reader, "flags", 0);
                        md._sb.Version = OptionalNum32(reader, "version", 1);
                        if (md._sb.Version is < 1 or > 2)
                            throw Fail(reader, $"unsupported version {md._sb.Version}");
                        md._uncommitted = true;
                        break;
                    case "device":
                        if (md == null || device != null)
                            throw Fail(reader, "<device> outside <superblock> or nested");
                        deviceId = Num(reader, "dev_id");
                        if (md.DeviceExists(deviceId))
                            throw Fail(reader, $"device {deviceId} appears twice");
                        md.CreateThin(deviceId);
                        device = md._devices[deviceId];
                        device.Details = new DeviceDetails(0, Num(reader, "transaction"), Num32(reader, "creation_time"), Num32(reader, "snap_time"));
                        if (reader.IsEmptyElement)
                            device = null;
                        break;
                    case "single_mapping":
                        if (md == null || device == null)
                            throw Fail(reader, "mapping outside <device>");
                        md.RestoreMapping(reader, device, deviceId, Num(reader, "origin_block"), Num(reader, "data_block"), 1, Num(reader, "time"));
                        break;
                    case "range_mapping":
                        if (md == null || device == null)
                            throw Fail(reader, "mapping outside <device>");
                        md.RestoreMapping(reader, device, deviceId, Num(reader, "origin_begin"), Num(reader, "data_begin"), Num(reader, "length"), Num(reader, "time"));
                        break;
                    default:
                        throw Fail(reader, $"unexpected element <{reader.Name}>");
                }
            }
            if (md == null)
                throw new FormatException("no <superblock> element in the XML");
            md.Commit();
            return md;
        }
        catch
        {
            md?.Dispose();
            throw;
        }
    }

    private void RestoreMapping(XmlReader reader, DeviceState device, ulong deviceId, ulong origin, ulong data, ulong length, ulong time)
    {
        if (time >= MetadataFormat.MaxTime)
            throw Fail(reader, $"time {time} does not fit in 24 bits");
        if (data + length > _tm.Data.NrBlocks || data + length < data)
            throw Fail(reader, $"mapping beyond end of data device ({_tm.Data.NrBlocks} blocks)");
        for (ulong i = 0; i < length; i++)
        {
            _tm.Data.Increment(data + i);
            InsertMapping(device, deviceId, origin + i, MetadataFormat.PackMapping(data + i, (uint)time));
        }
    }

    private static ulong Num(XmlReader reader, string name) =>
        reader.GetAttribute(name) != null ? OptionalNum(reader, name, 0) : throw Fail(reader, $"missing attribute {name}");

    private static ulong OptionalNum(XmlReader reader, string name, ulong fallback)
    {
        string? s = reader.GetAttribute(name);
        if (s == null)
            return fallback;
        return ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out ulong v)
            ? v : throw Fail(reader, $"attribute {name}=\"{s}\" is not a non-negative integer");
    }

    // The 32-bit fields: a larger number is refused rather than cut to its low bits.
    private static uint Num32(XmlReader reader, string name) => Fit32(reader, name, Num(reader, name));

    private static uint OptionalNum32(XmlReader reader, string name, uint fallback) => Fit32(reader, name, OptionalNum(reader, name, fallback));

    private static uint Fit32(XmlReader reader, string name, ulong value) =>
        value <= uint.MaxValue ? (uint)value : throw Fail(reader, $"attribute {name}=\"{value}\" does not fit in 32 bits");

    private static FormatException Fail(XmlReader reader, string what)
    {
        var li = reader as IXmlLineInfo;
        return new FormatException(li != null && li.HasLineInfo() ? $"XML line {li.LineNumber}: {what}" : what);
    }
}
