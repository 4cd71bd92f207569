namespace ThinFast.Metadata;
