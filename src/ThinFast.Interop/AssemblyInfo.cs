using System.Runtime.CompilerServices;

// Every import in this assembly is blittable, so the runtime's marshalling stubs are never needed;
// disabling them makes a non-blittable signature a compile error instead of a hidden copy per call.
[assembly: DisableRuntimeMarshalling]
