namespace ThinFast.Interop;
