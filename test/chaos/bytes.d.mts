export declare function byteAt(k: number, i: number): number;
